"""Wire protocol: round trips for every kind, and refusal (ProtocolError, nothing else) of garbage."""
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpnet.parallel import protocol as P
from dpnet.parallel.protocol import ProtocolError, decode, encode

SIG = P.model_signature(["dense", 784, 512, "relu", 10], 407050, np.float32)

# A valid (header, arrays) for every kind: the round-trip and mutation tests start here.
VALID = {
    P.HELLO: ({"rank": 0, "pid": 1234, "signature": SIG}, ()),
    P.WELCOME: ({"rank": 0, "config": {"params": {"name": "dpnet_1_ab_params"}}}, ()),
    P.STEP: ({"step": 7, "rank": 1, "start": 0, "stop": 3, "weights_version": 7, "indices": True,
              "scale": 0.375, "chunk": 4},
             (np.array([5, 1, 9], dtype=np.int64),)),
    P.GRAD: ({"step": 7, "rank": 1, "n": 3, "loss": 0.25, "correct": 2},
             (np.linspace(-1, 1, 11, dtype=np.float32),)),
    P.EVAL: ({"step": 0, "rank": 2, "start": 10, "stop": 20, "weights_version": 3, "split": "val"}, ()),
    P.EVAL_RESULT: ({"step": 0, "rank": 2, "n": 10, "loss": 1.5, "correct": 9}, ()),
    P.SYNC: ({"weights_version": 4, "weights": True}, (np.ones((2, 3), dtype=np.float64),)),
    P.HEARTBEAT: ({"rank": 3}, ()),
    P.ERROR: ({"rank": 1, "message": "ValueError: bad", "traceback": "Traceback ...", "step": 2}, ()),
    P.STOP: ({"reason": "done"}, ()),
    P.BYE: ({"rank": 1}, ()),
    P.PUSH: ({"weights_version": 3, "t": 3, "state": True, "optimizer": {"name": "adam"}},
             (np.ones(5, np.float32), np.zeros(5, np.float32), np.zeros(5, np.float32))),
    P.PULL: ({"weights_version": 3}, ()),
    P.STATE: ({"rank": 0, "weights_version": 3, "t": 3}, (np.ones(5, np.float32),)),
    P.JOIN: ({"pid": 77, "heartbeat_identity": "rh.0123abcd", "host": "node7"}, ()),
    P.ADMIT: ({"rank": 2, "config": {"task": "mlp", "arrays": {}}}, ()),
    P.FETCH: ({"rank": 2, "name": "train.x", "offset": 4096, "size": 1024}, ()),
    P.DATA: ({"name": "train.x", "offset": 4096, "total": 8192},
             (np.arange(1024, dtype=np.uint8),)),
}


def test_every_kind_has_a_valid_example():
    assert set(VALID) == P.KINDS


@pytest.mark.parametrize("kind", sorted(VALID))
def test_round_trip(kind):
    header, arrays = VALID[kind]
    frames = encode(kind, header, *arrays)
    # As bytes (what a copying recv gives) and as memoryviews (zero-copy recv).
    for as_wire in (lambda f: bytes(memoryview(f).cast("B")), lambda f: memoryview(f).cast("B")):
        k, h, arrs = decode([as_wire(f) for f in frames])
        assert k == kind
        assert h["v"] == P.PROTOCOL_VERSION
        for key, value in header.items():
            assert h[key] == value
        assert len(arrs) == len(arrays)
        for got, sent in zip(arrs, arrays):
            assert got.dtype == sent.dtype and got.shape == sent.shape
            np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize("kind, header, arrays, why", [
    (P.FETCH, {"rank": 0, "name": "x", "offset": 0, "size": 0}, (), "FETCH size"),
    (P.FETCH, {"rank": 0, "name": "x", "offset": 0, "size": P.MAX_CHUNK_BYTES + 1}, (),
     "FETCH size"),
    (P.DATA, {"name": "x", "offset": 10, "total": 12}, (np.zeros(4, np.uint8),),
     "runs past"),
    (P.DATA, {"name": "x", "offset": 0, "total": 64}, (np.zeros(4, np.float32),),
     "1-D uint8"),
    (P.JOIN, {"pid": 1, "heartbeat_identity": ""}, (), "heartbeat_identity"),
    (P.STEP, {"step": 1, "rank": 0, "start": 0, "stop": 1, "weights_version": 0,
              "attempt": -1}, (), "'attempt' must be >= 0"),
])
def test_the_remote_workers_messages_are_checked(kind, header, arrays, why):
    """What a remote peer could send to steer a run or make the other side allocate:
    refused on decode, whatever the sender's encoder allowed."""
    frames = [kind, msgpack.packb(dict(header, v=P.PROTOCOL_VERSION,
                                       arrays=[[a.dtype.str, list(a.shape)] for a in arrays])),
              *[a.tobytes() for a in arrays]]
    with pytest.raises(ProtocolError, match=why):
        decode(frames)


def test_decoded_array_is_a_read_only_view_of_the_frame():
    grad = np.arange(1000, dtype=np.float32)
    frames = encode(P.GRAD, {"step": 1, "rank": 0, "n": 4, "loss": 1.0, "correct": 0}, grad)
    wire = bytearray(memoryview(frames[2]).cast("B"))
    _, _, (got,) = decode([frames[0], frames[1], wire])
    assert np.shares_memory(got, np.frombuffer(wire, dtype=np.uint8))
    assert not got.flags.writeable


def test_encode_accepts_numpy_scalars_and_noncontiguous_arrays():
    g = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    frames = encode(P.GRAD, {"step": np.int64(3), "rank": 0, "n": np.int32(4),
                             "loss": np.float32(0.5), "correct": 1}, g)
    _, h, (got,) = decode(frames)
    assert h["step"] == 3 and h["loss"] == 0.5
    np.testing.assert_array_equal(got, g)


@pytest.mark.parametrize("field,value,match", [
    ("scale", -0.5, "'scale' must be >= 0"), ("scale", 1.5, r"'scale' must be in \[0, 1\]"),
    ("scale", float("nan"), r"'scale' must be in \[0, 1\]"), ("scale", "1", "must be float"),
    ("chunk", -1, "'chunk' must be >= 0"), ("chunk", 2.0, "must be int"),
])
def test_step_scale_and_chunk_are_checked(field, value, match):
    header, arrays = VALID[P.STEP]
    with pytest.raises(ProtocolError, match=match):
        encode(P.STEP, dict(header, **{field: value}), *arrays)
    raw = msgpack.packb(dict(header, **{field: value}, v=P.PROTOCOL_VERSION,
                             arrays=[["<i8", [3]]]), use_bin_type=True)
    with pytest.raises(ProtocolError, match=match):
        decode([P.STEP, raw, arrays[0].tobytes()])


def test_grad_may_live_in_shared_memory_instead_of_a_frame():
    h = {"step": 1, "rank": 0, "n": 4, "loss": 1.0, "correct": 0, "grad_in_shm": True}
    assert decode(encode(P.GRAD, h))[2] == []
    with pytest.raises(ProtocolError, match="announces 0"):
        encode(P.GRAD, h, np.zeros(3, np.float32))


@pytest.mark.parametrize("arr", [np.array([object()]), np.array(["a"]), np.array([True]),
                                 np.zeros(2, np.complex64)])
def test_encode_refuses_non_numeric_arrays(arr):
    with pytest.raises(ProtocolError, match="dtype"):
        encode(P.GRAD, {"step": 1, "rank": 0, "n": 1, "loss": 1.0, "correct": 0}, arr)


@pytest.mark.parametrize("bad, match", [
    ({"v": 1}, "reserved"),
    ({"rank": 0, "pid": -5, "signature": {}}, "'pid' must be >= 0"),
    ({"rank": 0, "pid": 1}, "lacks required field 'signature'"),
    ({"rank": True, "pid": 1, "signature": {}}, "'rank' must be int"),
    ({"rank": 0, "pid": 1, "signature": {}, "junk": object()}, "cannot encode"),
])
def test_encode_refuses_bad_headers(bad, match):
    with pytest.raises(ProtocolError, match=match):
        encode(P.HELLO, bad)


def _frames_with_header(kind, header, *arrays):
    return [kind, msgpack.packb(header), *arrays]


def _ok_grad_header(**over):
    h = {"v": P.PROTOCOL_VERSION, "arrays": [["<f4", [3]]], "step": 1, "rank": 0, "n": 3,
         "loss": 0.5, "correct": 1}
    h.update(over)
    return h


GRAD3 = np.zeros(3, np.float32).tobytes()


@pytest.mark.parametrize("frames, match", [
    ([], "0 frames"),
    ([P.STOP], "1 frames"),
    (b"STOP", "bytes frames"),
    ([b"NOPE", b"\x80"], "unknown message kind"),
    ([b"x" * 10_000, b"\x80"], "unknown message kind"),
    ([P.STOP, b"\xc1"], "not valid msgpack"),
    ([P.STOP, b"\x92\x01"], "not valid msgpack"),          # truncated array
    ([P.STOP, msgpack.packb({"v": 1, "arrays": []}) + b"\x00"], "not valid msgpack"),
    ([P.STOP, msgpack.packb([1, 2])], "must be a map"),
    ([P.STOP, msgpack.packb({1: 2})], "not valid msgpack"),  # strict_map_key
    ([P.STOP, msgpack.packb({"v": 99, "arrays": [], "reason": "x"})], "protocol version 99"),
    ([P.STOP, msgpack.packb({"v": 1, "reason": "x"})], "'arrays' must be a list"),
    ([P.STOP, msgpack.packb({"v": 1, "arrays": []})], "lacks required field 'reason'"),
    ([P.STOP, msgpack.packb({"v": 1, "arrays": [], "reason": 5})], "'reason' must be str"),
    ([P.STOP, b"\xc6" + (1 << 20).to_bytes(4, "big") + b"x" * (1 << 20)], "header is"),
    (_frames_with_header(P.GRAD, _ok_grad_header()), "declares 1 array frames, message has 0"),
    (_frames_with_header(P.GRAD, _ok_grad_header(), GRAD3[:-1]), "frame has 11"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["|O", [3]]]), GRAD3), "dtype '|O'"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["<f4", [-3]]]), GRAD3), "invalid shape"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["<f4", [1 << 40]]]), GRAD3), "invalid shape"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["<f4", [1 << 20] * 3]]), GRAD3), "bytes, limit"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["<f4", [1] * 9]]), GRAD3), "dimensions"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[["<f4", [3.0]]]), GRAD3), "invalid shape"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=["<f4"]), GRAD3), "descriptor"),
    (_frames_with_header(P.GRAD, _ok_grad_header(loss="0.5"), GRAD3), "'loss' must be float"),
    (_frames_with_header(P.GRAD, _ok_grad_header(n=-1), GRAD3), "'n' must be >= 0"),
    (_frames_with_header(P.GRAD, _ok_grad_header(arrays=[]), ), "announces 1 array frames, got 0"),
    (_frames_with_header(P.HEARTBEAT, {"v": 1, "arrays": [["<f4", [3]]], "rank": 0}, GRAD3),
     "allowed 0..0"),
    (_frames_with_header(P.STEP, {"v": 1, "arrays": [], "step": 1, "rank": 0, "start": 5,
                                  "stop": 2, "weights_version": 0}), "reversed"),
    (_frames_with_header(P.STEP, {"v": 1, "arrays": [["<f4", [3]]], "step": 1, "rank": 0,
                                  "start": 0, "stop": 3, "weights_version": 0, "indices": True},
                         GRAD3), "index frame"),
    (_frames_with_header(P.GRAD, _ok_grad_header(), 42), "frame 2 is a int, not a buffer"),
    ([P.STOP, msgpack.ExtType(5, b"x")], "not a buffer"),
    ([P.STOP, msgpack.packb({"v": 1, "arrays": [], "reason": msgpack.ExtType(1, b"abc")})],
     "not valid msgpack"),
])
def test_decode_refuses(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_deeply_nested_header_is_refused():
    raw = b"\x91" * 100_000 + b"\x01"     # [[[[...1]]]] deeper than msgpack's stack
    with pytest.raises(ProtocolError):
        decode([P.STOP, raw])


# --- hypothesis: whatever arrives, ProtocolError or a valid message, never anything else --
def _decode_or_refuse(frames):
    try:
        kind, header, arrays = decode(frames)
    except ProtocolError:
        return None
    assert kind in P.KINDS and isinstance(header, dict)
    return kind, header, arrays


msgpack_objects = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
kinds = st.sampled_from(sorted(P.KINDS)) | st.binary(max_size=12)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_byte_frames_are_refused(frames):
    _decode_or_refuse(frames)


@FAST
@given(kinds, msgpack_objects, st.lists(st.binary(max_size=64), max_size=3))
def test_random_msgpack_headers_are_refused(kind, header, arrays):
    _decode_or_refuse([kind, msgpack.packb(header), *arrays])


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_mutated_valid_headers_never_crash(kind, data):
    header, arrays = VALID[kind]
    h = msgpack.unpackb(encode(kind, header, *arrays)[1])
    for key in data.draw(st.lists(st.sampled_from(sorted(h)), max_size=3)):
        h[key] = data.draw(msgpack_objects)
    if data.draw(st.booleans()):
        h.pop(data.draw(st.sampled_from(sorted(h))), None)
    frames = [kind, msgpack.packb(h), *(a.tobytes() for a in arrays)]
    frames.extend(data.draw(st.lists(st.binary(max_size=32), max_size=2)))
    _decode_or_refuse(frames)


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_or_resized_frames_are_refused(kind, data):
    header, arrays = VALID[kind]
    frames = [bytes(memoryview(f).cast("B")) for f in encode(kind, header, *arrays)]
    i = data.draw(st.integers(0, len(frames) - 1))
    cut = data.draw(st.integers(0, max(0, len(frames[i]) - 1)))
    extra = data.draw(st.binary(max_size=8))
    mutated = frames[:i] + [frames[i][:cut] + extra] + frames[i + 1:]
    if mutated != frames:
        result = _decode_or_refuse(mutated)
        # A header can survive a change of a trailing string byte; the kind frame can
        # become another valid kind. Either way: a valid message or ProtocolError.
        if result is not None and i > 0:
            assert result[0] == kind


@FAST
@given(st.lists(st.tuples(st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|O", ">f4", "x"]),
                          st.lists(st.integers(-5, 2**40), max_size=4)), max_size=3),
       st.lists(st.binary(max_size=64), max_size=3))
def test_random_array_descriptors_are_refused_or_exact(descr, payloads):
    h = {"v": 1, "arrays": [[d, list(s)] for d, s in descr], "weights_version": 0,
         "weights": True}
    result = _decode_or_refuse([P.SYNC, msgpack.packb(h), *payloads])
    if result is not None:
        (w,) = result[2]
        assert w.nbytes == len(payloads[0])


# --- handshake --------------------------------------------------------------------------
def test_signature_survives_the_wire_and_mismatches_are_named():
    sig = P.model_signature(("dense", (784, 10)), 7850, "float32", data_checksum="abc")
    _, h, _ = decode(encode(P.HELLO, {"rank": 0, "pid": 1, "signature": sig}))
    P.check_signature(sig, h["signature"])        # tuples became lists: still equal
    with pytest.raises(ProtocolError, match=r"'n_params': expected 7850, got 7851"):
        P.check_signature(sig, dict(h["signature"], n_params=7851))
    with pytest.raises(ProtocolError, match="'dtype'"):
        P.check_signature(sig, P.model_signature(("dense", (784, 10)), 7850, np.float64,
                                                 data_checksum="abc"))
    with pytest.raises(ProtocolError, match="'data_checksum'"):
        P.check_signature(sig, P.model_signature(("dense", (784, 10)), 7850, "float32"))
    with pytest.raises(ProtocolError, match="must be a map"):
        P.check_signature(sig, [1])
    with pytest.raises(ValueError, match="n_params must be >= 0"):
        P.model_signature("x", -1, "float32")


def test_protocol_imports_neither_zmq_nor_the_math():
    import ast
    import pathlib
    tree = ast.parse(pathlib.Path(P.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert names <= {"__future__", "hashlib", "json", "math", "msgpack", "numpy"}, names
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))


def test_frames_follow_the_flags_of_the_new_kinds():
    g = np.ones(4, np.float32)
    grad = {"step": 1, "rank": 0, "n": 2, "loss": 0.5, "correct": 1}
    assert decode(encode(P.GRAD, dict(grad, updated=True)))[2] == []
    with pytest.raises(ProtocolError, match="announces 0 array frames, got 1"):
        encode(P.GRAD, dict(grad, updated=True), g)
    push = {"weights_version": 2, "t": 2, "optimizer": {"name": "sgd"}}
    with pytest.raises(ProtocolError, match="announces 1 array frames, got 2"):
        encode(P.PUSH, push, g, g)
    assert len(decode(encode(P.PUSH, dict(push, state=True), g, g, g))[2]) == 3
    with pytest.raises(ProtocolError, match="carries 6 array frames"):
        encode(P.STATE, {"rank": 0, "weights_version": 2, "t": 2, "state": True}, *[g] * 6)
    with pytest.raises(ProtocolError, match="'t' must be >= 0"):
        encode(P.PULL, {"weights_version": 1}) and encode(P.STATE, {
            "rank": 0, "weights_version": 1, "t": -1}, g)
