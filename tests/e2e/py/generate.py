"""Generates Python gRPC modules from meshid's proto/ into OUT_DIR.

Usage: generate.py PROTO_DIR OUT_DIR
"""
import glob
import os
import sys

import grpc_tools
from grpc_tools import protoc


def main():
    proto, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    files = sorted(
        os.path.relpath(p, proto) for p in glob.glob(os.path.join(proto, "**", "*.proto"), recursive=True)
    )
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", "-I" + proto, "-I" + well_known, "--python_out=" + out, "--grpc_python_out=" + out]
    return protoc.main(args + files)


if __name__ == "__main__":
    sys.exit(main())
