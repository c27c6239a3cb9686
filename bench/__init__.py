"""gRPC unary benchmark: direct vs. a two-hop nginx grpc_pass chain vs. two interlink gateways.

Run it as `bash bench/run.sh [--quick]` (installs nginx and h2load, then `python -m bench`). See
bench/README.md for what is measured and how to read the numbers.
"""
