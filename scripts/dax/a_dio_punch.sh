#!/bin/bash
# Scenario a: direct I/O into A (2 s delay) while A's range is punched; B then
# reuses freed blocks.  Safe: the punch waits for the DMA.  Unsafe: collision.
# GROUP: quick
# TIMEOUT: 60
source "$(dirname "$0")/common.sh"
require_fuse
require_prog fallocate
race_case safe punch
race_case unsafe punch
finish
