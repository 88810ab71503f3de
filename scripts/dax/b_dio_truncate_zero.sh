#!/bin/bash
# Scenario b: as (a), with truncate and with ZERO_RANGE instead of punch.
# GROUP: quick
# TIMEOUT: 120
source "$(dirname "$0")/common.sh"
require_fuse
require_prog fallocate
race_case safe truncate
race_case unsafe truncate
race_case safe zero
race_case unsafe zero
finish
