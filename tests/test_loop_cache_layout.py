"""passes.loop_cache_layout: a loop's concat cache carried in the layout its attention
reads. One positive program (two caches, shape readers, a read after the loop), one
variant per safety condition that must stop the rewrite of one cache, and a generator
of random cache loops whose outputs must not change; each on the Executor and on Paddle
Inference in every CPU configuration we create (``run_inference`` makes the predictor
as ``StaticGenerationModel`` does, which applies the rewrite)."""

import random

import numpy as np
import paddle
import pytest
from loop_programs import INFERENCE_CONFIGS, build_pir, run, run_inference, same_bits

from paddlenlp_ext.passes.loop_cache_layout import carry_loop_caches_permuted

B, H, D, PROMPT, STEPS = 2, 3, 4, 5, 3
RNG = np.random.default_rng(0)
FEED = {"q": RNG.standard_normal((B, H, 1, D)).astype("float32"),
        "k0": RNG.standard_normal((B, PROMPT, H, D)).astype("float32"),
        "v0": RNG.standard_normal((B, PROMPT, H, D)).astype("float32")}


def attention_loop(variant: str = "eligible"):
    """PaddleNLP's attention over a key and a value cache grown by concat each step;
    ``variant`` breaks one safety condition for the key cache only ("static-init" breaks
    none: the caches start from inputs of a static length)."""
    prompt = PROMPT if variant == "static-init" else -1
    q = paddle.static.data("q", [B, H, 1, D], "float32")
    k0 = paddle.static.data("k0", [B, prompt, H, D], "float32")
    v0 = paddle.static.data("v0", [B, prompt, H, D], "float32")
    i, steps = paddle.full([1], 0, "int64"), paddle.full([1], STEPS, "int64")
    acc = paddle.zeros([B, H, 1, D], "float32")

    def body(i, k, v, acc, spare):
        step = paddle.cast(i, "float32")
        new_k = paddle.transpose(q, [0, 2, 1, 3]) * (0.5 + step)  # [B, 1, H, D]
        new_v = paddle.tanh(new_k + 1.0)
        keys = paddle.concat([k, new_k], axis=1)
        values = paddle.concat([v, new_v], axis=1)
        if variant == "yielded-twice":  # condition 3: another loop variable would get the permuted layout
            spare = keys
        if variant == "two-perms":  # condition 3: one layout cannot serve both
            acc = acc + paddle.transpose(keys, [0, 2, 1, 3])[:, :, :1, :]
        if variant == "concat-read":  # condition 3: a reader that is not a transpose
            acc = acc + paddle.transpose(keys[:, :1], [0, 2, 1, 3])
        if variant == "arg-read":  # condition 2: the carried value read as it is
            acc = acc + paddle.transpose(k[:, -1:], [0, 2, 1, 3])
        keys_t = paddle.transpose(paddle.transpose(keys, [0, 2, 1, 3]), [0, 1, 3, 2])  # [B, H, D, L]
        if variant == "two-perms":
            keys_t = paddle.transpose(keys, [0, 2, 3, 1])
        scores = paddle.nn.functional.softmax(paddle.matmul(q, keys_t) / 2.0)
        out = paddle.matmul(scores, paddle.transpose(values, [0, 2, 1, 3]))
        # shape readers of a loop variable and of a concat: given the original order back
        length = paddle.cast(paddle.shape(k)[1] + paddle.shape(values)[1], "float32")
        if variant == "not-concat":  # condition 1: the yielded value is no concat
            keys = keys * 1.0
        return [i + 1, keys, values, acc + out * length, spare]

    spare = paddle.zeros([B, 1, H, D], "float32") if variant != "yielded-twice" else paddle.assign(k0)
    _, k, v, acc, spare = paddle.static.nn.while_loop(lambda i, *_: i < steps, body, [i, k0, v0, acc, spare])
    if variant == "static-init":  # while_loop made the inits dynamic; a translated or edited program need not
        static = paddle.zeros([B, PROMPT, H, D], "float32").type()
        k0.set_type(static)
        v0.set_type(static)
    after = paddle.sum(k[:, -2:], axis=1) + v[:, 0]  # read after the loop: the inverse transpose
    outputs = [acc, after, spare]
    if variant == "fetched":  # condition 4: the caller holds the loop's result
        outputs.append(k)
    return outputs


def _loop_ops(program, name: str) -> int:
    body = next(op for op in program.global_block().ops if op.name() == "pd_op.while").as_while_op().body()
    return sum(op.name() == name for op in body.ops)


def check_layout(make, feed: dict, rewritten: int, label: str, every_cache: bool = False):
    """The delta, idempotence and unchanged outputs on the Executor and on every Paddle
    Inference configuration, for the program ``make`` builds. ``every_cache``: both
    caches rewritten, so their 3 transposes went and the new entries' 2 (one position)
    came. A head repeat stays one per cache."""
    reference = run(build_pir(make, feed))
    built = build_pir(make, feed)
    transposes, tiles = _loop_ops(built.program, "pd_op.transpose"), _loop_ops(built.program, "pd_op.tile")
    report = carry_loop_caches_permuted(built.program, outputs=built.outputs)
    assert (report.rewritten, report.loops, report.modified) == (rewritten, 1, rewritten > 0), report.summary()
    assert _loop_ops(built.program, "pd_op.tile") == tiles
    if every_cache:
        assert _loop_ops(built.program, "pd_op.transpose") == transposes - 3 + 2
    text = str(built.program)
    again = carry_loop_caches_permuted(built.program, outputs=built.outputs)
    assert not again.modified and str(built.program) == text
    assert same_bits(reference, run(built)), "outputs changed on the Executor"
    for onednn in INFERENCE_CONFIGS:
        for outputs in run_inference(build_pir(make, feed), onednn=onednn):
            assert len(outputs) == len(reference)
            for got, expected in zip(outputs, reference):
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{label}, {onednn}")


def check_attention_layout(variant: str, rewritten: int):
    check_layout(lambda: attention_loop(variant), FEED, rewritten, variant, every_cache=variant == "eligible")


def test_both_caches_are_carried_permuted_and_nothing_changes():
    check_attention_layout("eligible", rewritten=2)


def test_a_static_init_leaves_the_carried_length_dynamic():
    """The loop variable's type is its own permuted, not its init's: a cache that starts
    at a static length still grows."""
    check_attention_layout("static-init", rewritten=2)
    built = build_pir(lambda: attention_loop("static-init"), dict(FEED))
    carry_loop_caches_permuted(built.program, outputs=built.outputs)
    loop = next(op for op in built.program.global_block().ops if op.name() == "pd_op.while")
    args = loop.as_while_op().body().args()
    assert [list(args[1].shape), list(args[2].shape)] == [[B, H, D, -1], [B, H, -1, D]]
    assert [list(loop.result(1).shape), list(loop.result(2).shape)] == [[B, H, D, -1], [B, H, -1, D]]


@pytest.mark.parametrize("variant", ["not-concat", "arg-read", "concat-read", "two-perms", "yielded-twice", "fetched"])
def test_a_broken_condition_keeps_that_cache_as_it_is(variant):
    check_attention_layout(variant, rewritten=1)


# --- grouped-query attention: the heads repeated between the concat and the transposes ---

G, N = 2, 3  # key/value heads, and how many query heads share each
GQA_FEED = {"q": RNG.standard_normal((B, G * N, 1, D)).astype("float32"),
            "k0": RNG.standard_normal((B, PROMPT, G, D)).astype("float32"),
            "v0": RNG.standard_normal((B, PROMPT, G, D)).astype("float32")}


def repeat_heads(x, times: int, variant: str = "each"):
    """PaddleNLP's ``repeat_kv`` on [B, L, G, D] in a static program: the target's batch
    and length read from ``x``'s shape. "whole" repeats the whole heads axis (the new axis
    before it); the other variants break condition 5. Returns the repeat and a scalar
    the loop adds to its output (a second reader of the unsqueezed or the tiled value)."""
    dims = paddle.shape(x)
    inserted = {"whole": 2, "new-axis-elsewhere": 0}.get(variant, 3)
    unsqueezed = paddle.unsqueeze(x, inserted)
    tiled = paddle.tile(unsqueezed, [times if k == inserted else 1 for k in range(5)])
    side = {"tile-read": tiled, "unsqueeze-read": unsqueezed}.get(variant)
    side = paddle.zeros([], "float32") if side is None else paddle.sum(side)
    target = [dims[0], dims[1], G * times, D]
    if variant == "swapped-target":  # a valid reshape that is not a merge (batch and length swapped)
        target = [dims[1], dims[0], G * times, D]
    return paddle.reshape(tiled, target), side


def grouped_attention_loop(variant: str = "each"):
    """``attention_loop`` with grouped-query attention: both caches' heads repeated
    (``repeat_heads``) before their transposes. Variants other than "each" and "whole"
    break condition 5 for the key cache only."""
    q = paddle.static.data("q", [B, G * N, 1, D], "float32")
    k0 = paddle.static.data("k0", [B, -1, G, D], "float32")
    v0 = paddle.static.data("v0", [B, -1, G, D], "float32")
    i, steps = paddle.full([1], 0, "int64"), paddle.full([1], STEPS, "int64")
    acc = paddle.zeros([B, G * N, 1, D], "float32")

    def body(i, k, v, acc):
        step = paddle.cast(i, "float32")
        new_k = paddle.transpose(q[:, :G], [0, 2, 1, 3]) * (0.5 + step)  # [B, 1, G, D]
        new_v = paddle.tanh(new_k + 1.0)
        keys = paddle.concat([k, new_k], axis=1)
        values = paddle.concat([v, new_v], axis=1)
        repeated_keys, side = repeat_heads(keys, N, variant)
        acc = acc + side
        if variant == "repeat-read":  # the repeat read as it is, not through a transpose
            acc = acc + paddle.transpose(repeated_keys[:, :1], [0, 2, 1, 3])
        if variant == "concat-transposed":  # the concat read by a transpose besides the repeat
            acc = acc + paddle.sum(paddle.transpose(keys, [0, 2, 1, 3]))
        keys_t = paddle.transpose(paddle.transpose(repeated_keys, [0, 2, 1, 3]), [0, 1, 3, 2])
        values_t = paddle.transpose(repeat_heads(values, N, "whole" if variant == "whole" else "each")[0],
                                    [0, 2, 1, 3])
        if variant == "swapped-target":  # keys of shape [L, G*N, D, B]: read in an order-sensitive sum
            flat = paddle.reshape(keys_t, [-1])
            acc = acc + paddle.sum(flat * paddle.cast(paddle.arange(paddle.shape(flat)[0]), "float32"))
            keys_t = paddle.transpose(values_t, [0, 1, 3, 2])
        scores = paddle.nn.functional.softmax(paddle.matmul(q, keys_t) / 2.0)
        out = paddle.matmul(scores, values_t)
        length = paddle.cast(paddle.shape(repeated_keys)[1], "float32")  # a shape reader of the repeat
        return [i + 1, keys, values, acc + out * length]

    _, k, v, acc = paddle.static.nn.while_loop(lambda i, *_: i < steps, body, [i, k0, v0, acc])
    return [acc, paddle.sum(k[:, -2:], axis=1) + v[:, 0]]


GROUPED_VARIANTS = [("each", 2), ("whole", 2), ("new-axis-elsewhere", 1), ("unsqueeze-read", 1), ("tile-read", 1),
                    ("swapped-target", 1), ("repeat-read", 1), ("concat-transposed", 1)]


@pytest.mark.parametrize("variant, rewritten", GROUPED_VARIANTS)
def test_grouped_attention_repeats_the_permuted_cache(variant, rewritten):
    """The heads' repeat made of the permuted cache, on the Executor and every Paddle
    Inference configuration, with its delta; each condition 5 variant keeps the key cache
    as it is."""
    check_layout(lambda: grouped_attention_loop(variant), GQA_FEED, rewritten, variant,
                 every_cache=variant in ("each", "whole"))


# --- random cache loops --------------------------------------------------------------

def _random_perm(rng: random.Random, rank: int) -> list[int]:
    perm = list(range(rank))
    while perm == list(range(rank)):
        rng.shuffle(perm)
    return perm


def random_cache_loop(seed: int):
    """(builder, feed, caches the rule must rewrite): 1-3 caches of rank 3 or 4, each
    grown on a random axis and read through 1-3 levels of random transposes, half of
    them through a repeat of another axis first; each may also have shape readers, a
    reader the rule must refuse, be yielded twice, be read after the loop or be fetched."""
    rng = random.Random(seed)
    caches = []
    for c in range(rng.randint(1, 3)):
        rank = rng.choice([3, 4])
        shape = [rng.randint(1, 3) for _ in range(rank)]
        caches.append({
            "name": f"c{c}", "rank": rank, "shape": shape, "axis": rng.randrange(rank),
            "levels": [_random_perm(rng, rank) for _ in range(rng.randint(1, 3))],
            "shape_reads": rng.random() < 0.5,
            "refuse": rng.choice([None, None, "arg-read", "concat-read", "mid-read", "yielded-twice", "fetched"]),
            "after": rng.random() < 0.5,
        })
        axis = caches[-1]["axis"]
        if rng.random() < 0.5:  # a repeat (condition 5) of one static axis, each entry or the whole axis
            repeated = rng.choice([a for a in range(rank) if a != axis])
            caches[-1]["repeat"] = (repeated, repeated + rng.choice([0, 1]), rng.randint(1, 3))
    feed = {c["name"]: np.random.default_rng([seed, k]).standard_normal(c["shape"]).astype("float32")
            for k, c in enumerate(caches)}
    # a chain whose levels compose nowhere is still one rewrite (the first level's);
    # "mid-read" reads a middle level, which only stops the chain there
    expected = sum(c["refuse"] in (None, "mid-read") for c in caches)

    def build():
        inits = [paddle.static.data(c["name"], [-1 if k == c["axis"] else d for k, d in enumerate(c["shape"])],
                                    "float32") for c in caches]
        i, steps = paddle.full([1], 0, "int64"), paddle.full([1], 2, "int64")
        sink = paddle.zeros([1], "float32")
        spares = [paddle.zeros([1], "float32") for _ in caches]

        def body(i, sink, *carried):
            values, spares = list(carried[:len(caches)]), list(carried[len(caches):])
            step = paddle.cast(i, "float32")
            for k, c in enumerate(caches):
                arg = values[k]
                one = [1 if a == c["axis"] else d for a, d in enumerate(c["shape"])]
                new = paddle.full(one, 0.25, "float32") * (step + 1.0 + k)
                grown = paddle.concat([arg, new], axis=c["axis"])
                read = grown
                if "repeat" in c:
                    repeated, inserted, times = c["repeat"]
                    tiled = paddle.tile(paddle.unsqueeze(grown, inserted),
                                        [times if a == inserted else 1 for a in range(c["rank"] + 1)])
                    dims = paddle.shape(grown)
                    read = paddle.reshape(tiled, [dims[a] if a == c["axis"] else d * times if a == repeated else d
                                                  for a, d in enumerate(c["shape"])])
                for level, perm in enumerate(c["levels"]):
                    read = paddle.transpose(read, perm)
                    if c["refuse"] == "mid-read" and level == 0 and len(c["levels"]) > 1:
                        sink = sink + paddle.sum(paddle.slice(read, [0], [0], [1]) * 3.0)
                flat = paddle.reshape(read, [-1])
                sink = sink + paddle.sum(flat * paddle.cast(paddle.arange(paddle.shape(flat)[0]), "float32"))
                if c["shape_reads"]:
                    sink = sink + paddle.cast(paddle.shape(arg)[c["axis"]] * 10 + paddle.shape(grown)[0], "float32")
                if c["refuse"] == "arg-read":
                    sink = sink + paddle.sum(paddle.slice(arg, [0], [0], [1]) * 2.0)
                if c["refuse"] == "concat-read":
                    sink = sink + paddle.sum(paddle.slice(grown, [c["rank"] - 1], [0], [1]))
                if c["refuse"] == "yielded-twice":
                    spares[k] = grown
                values[k] = grown
            return [i + 1, sink, *values, *spares]

        inits_spares = [paddle.assign(inits[k]) if c["refuse"] == "yielded-twice" else spares[k]
                        for k, c in enumerate(caches)]
        _, sink, *results = paddle.static.nn.while_loop(lambda i, *_: i < steps, body,
                                                        [i, sink, *inits, *inits_spares])
        outputs = [sink]
        for k, c in enumerate(caches):
            if c["after"]:
                outputs.append(paddle.slice(results[k], [c["axis"]], [0], [1]) + 1.0)
            if c["refuse"] == "fetched":
                outputs.append(results[k])
            if c["refuse"] == "yielded-twice":
                outputs.append(results[len(caches) + k])
        return outputs

    return build, feed, expected


def test_random_cache_loops_keep_their_outputs():
    """The rewrite count the generator intends, and bit-identical outputs on the
    Executor; every fourth program also on every Paddle Inference configuration."""
    rewritten = 0
    for seed in range(24):
        build, feed, expected = random_cache_loop(seed)
        reference = run(build_pir(build, feed))
        built = build_pir(build, feed)
        report = carry_loop_caches_permuted(built.program, outputs=built.outputs)
        assert report.rewritten == expected, (seed, report.summary())
        assert same_bits(reference, run(built)), f"seed {seed}: outputs changed"
        rewritten += report.rewritten
        if seed % 4 == 0:
            for onednn in INFERENCE_CONFIGS:
                for outputs in run_inference(build_pir(build, feed), onednn=onednn):
                    for got, want in zip(outputs, reference):
                        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=f"seed {seed}, {onednn}")
    assert rewritten >= 12  # the generator draws rewritable caches, not only refusals
