#!/usr/bin/env bash
# Fails unless ECR's scan of REPOSITORY:TAG finished with no Critical and no High findings.
# Usage: docker/ecr_scan_gate.sh REPOSITORY TAG   (region from $AWS_DEFAULT_REGION)
# Starts the scan when the repository does not scan on push; waits for it either way.
set -euo pipefail
repository=$1 tag=$2

aws ecr start-image-scan --repository-name "$repository" --image-id "imageTag=$tag" >/dev/null 2>&1 \
    || true  # already scanned on push, or a scan is running: the wait below covers both
aws ecr wait image-scan-complete --repository-name "$repository" --image-id "imageTag=$tag"

counts=$(aws ecr describe-image-scan-findings --repository-name "$repository" --image-id "imageTag=$tag" \
    --query 'imageScanFindings.findingSeverityCounts' --output json)
echo "ECR scan of $repository:$tag: ${counts:-null}"
critical_high=$(printf '%s' "$counts" | python3 -c 'import json, sys
counts = json.load(sys.stdin) or {}
print(counts.get("CRITICAL", 0) + counts.get("HIGH", 0))')
if [ "$critical_high" != 0 ]; then
    echo "ECR scan of $repository:$tag: $critical_high Critical/High findings; not releasing it" >&2
    exit 1
fi
