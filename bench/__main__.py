import sys

from bench.grpc_bench import main

sys.exit(main())
