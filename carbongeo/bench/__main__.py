"""``python -m carbongeo.bench _worker KIND PARAMS_JSON``: one measurement (internal)."""

import sys

from carbongeo.bench.harness import worker_main
from carbongeo.bench.workers import WORKERS

if __name__ == "__main__":
    sys.exit(worker_main(WORKERS, sys.argv[1:]))
