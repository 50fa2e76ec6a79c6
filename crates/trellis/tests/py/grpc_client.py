#!/usr/bin/env python3
"""Drives `trellis sample-app` over gRPC with grpcio and prints one JSON line.

Protobuf messages are hand-encoded (no protoc, no generated modules), so the
only dependency is `grpcio`. Usage:

    grpc_client.py ADDR echo MESSAGE [STATUS_CODE]
    grpc_client.py ADDR echo-many MESSAGE COUNT      (COUNT unary calls on one channel)
    grpc_client.py ADDR stream MESSAGE COUNT [STATUS_CODE]
    grpc_client.py ADDR health [SERVICE]
    grpc_client.py ADDR unknown

Output: {"code": "OK", "details": ..., "responses": [...], "trailers": {...}}
"""
import json
import sys

import grpc


def varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_str(num, s):
    data = s.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_int(num, v):
    return varint(num << 3) + varint(v) if v else b""


def decode(buf):
    """Decodes a flat message of varint and length-delimited fields: {num: value}."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i:i + n].decode(), i + n
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields[num] = value
    return fields


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def echo_request(message, count=0, status_code=0):
    return field_str(1, message) + field_int(2, count) + field_int(3, status_code)


def echo_response(buf):
    f = decode(buf)
    return {"message": f.get(1, ""), "service": f.get(2, ""), "version": f.get(3, ""),
            "instance": f.get(4, ""), "index": f.get(5, 0)}


def main():
    addr, verb, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    identity = lambda b: b  # noqa: E731 - requests are pre-encoded bytes
    result = {"code": "OK", "details": "", "responses": [], "trailers": {}}
    with grpc.insecure_channel(addr) as channel:
        try:
            if verb == "echo":
                call = channel.unary_unary("/trellis.sample.v1.Echo/Echo",
                                           request_serializer=identity,
                                           response_deserializer=echo_response)
                status = int(args[1]) if len(args) > 1 else 0
                resp, c = call.with_call(echo_request(args[0], 0, status), timeout=10)
                result["responses"].append(resp)
                result["trailers"] = dict(c.trailing_metadata() or ())
            elif verb == "echo-many":
                call = channel.unary_unary("/trellis.sample.v1.Echo/Echo",
                                           request_serializer=identity,
                                           response_deserializer=echo_response)
                for _ in range(int(args[1])):
                    result["responses"].append(call(echo_request(args[0]), timeout=10))
            elif verb == "stream":
                call = channel.unary_stream("/trellis.sample.v1.Echo/EchoStream",
                                            request_serializer=identity,
                                            response_deserializer=echo_response)
                status = int(args[2]) if len(args) > 2 else 0
                it = call(echo_request(args[0], int(args[1]), status), timeout=10)
                for resp in it:
                    result["responses"].append(resp)
                result["trailers"] = dict(it.trailing_metadata() or ())
            elif verb == "health":
                call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=identity,
                                           response_deserializer=decode)
                resp = call(field_str(1, args[0]) if args else b"", timeout=10)
                result["responses"].append({"status": resp.get(1, 0)})
            elif verb == "unknown":
                call = channel.unary_unary("/trellis.sample.v1.Echo/Nope",
                                           request_serializer=identity,
                                           response_deserializer=identity)
                call(b"", timeout=10)
            else:
                raise SystemExit(f"unknown verb {verb}")
        except grpc.RpcError as err:
            result["code"] = err.code().name
            result["details"] = err.details() or ""
            result["trailers"] = dict(err.trailing_metadata() or ())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
