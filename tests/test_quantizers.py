"""Quantizers: VQ (EMA), residual VQ, FSQ, BSQ and codebook-usage statistics (tiny sizes, CPU)."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from sitok.quantizers import BSQ, FSQ, CodebookUsage, EMAVectorQuantizer, Quantizer, ResidualVQ, build_quantizer

from conftest import free_port

D, K = 8, 64


def make(kind, **kw):
    torch.manual_seed(0)
    if kind == "vq":
        return EMAVectorQuantizer(D, K, **kw)
    if kind == "vq_chunked":  # 4 frames per distance chunk: exercises chunk boundaries
        return EMAVectorQuantizer(D, K, chunk_elements=4 * K, **kw)
    if kind == "rvq":
        return ResidualVQ(D, num_codebooks=3, codebook_size=K, **kw)
    if kind == "fsq":
        return FSQ(dim=4, levels=[3, 4, 2, 5])
    if kind == "bsq":
        return BSQ(D, bits_per_codebook=4)  # 8 bits -> 2 codebooks of 16 codes
    raise ValueError(kind)


KINDS = ["vq", "rvq", "fsq", "bsq"]
CN = {"vq": 1, "vq_chunked": 1, "rvq": 3, "fsq": 1, "bsq": 2}


def batch(q, B=3, T=7, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(B, T, q.dim, generator=g)
    lengths = torch.tensor([T, T - 2, 3])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T]
    return z, mask


def buffers(q):
    return {k: v.clone() for k, v in q.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- interface ----


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_types(kind):
    q = make(kind)
    z, mask = batch(q)
    out = q(z, mask)
    B, T, _ = z.shape
    assert isinstance(q, Quantizer)
    assert out.z_q.shape == (B, T, q.dim)
    assert out.codes.shape == (B, CN[kind], T) and out.codes.dtype == torch.long
    assert q.num_codebooks == CN[kind]
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < q.codebook_size
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert 0 < out.stats["usage"] <= 1 and out.stats["perplexity"] >= 1
    assert q.encode(z, mask).shape == (B, CN[kind], T)
    assert q.decode(out.codes).shape == (B, T, q.dim)
    assert q.bits_per_token == pytest.approx(CN[kind] * math.log2(q.codebook_size))


def test_bits_per_token_of_paper_settings():
    assert EMAVectorQuantizer(32, 65536, init_from_data=False).bits_per_token == 16  # x 12.5 Hz = 200 bit/s
    assert ResidualVQ(32, num_codebooks=4, codebook_size=1024).bits_per_token == 40
    assert FSQ(16).codebook_size == 65536 and FSQ(16).bits_per_token == 16
    bsq = BSQ(32)
    assert (bsq.num_codebooks, bsq.codebook_size, bsq.bits_per_token) == (2, 65536, 32)


def test_build_quantizer_and_bad_configs():
    assert type(build_quantizer("vq", 8, codebook_size=16)) is EMAVectorQuantizer
    assert type(build_quantizer("rvq", 8, codebook_size=16, num_codebooks=2)) is ResidualVQ
    assert type(build_quantizer("fsq", 16)) is FSQ
    assert type(build_quantizer("bsq", 16)) is BSQ
    with pytest.raises(ValueError, match="unknown quantizer"):
        build_quantizer("lfq", 8)
    with pytest.raises(ValueError, match="len\\(levels\\)"):
        FSQ(dim=8)  # default levels [2] * 16
    with pytest.raises(ValueError):
        FSQ(dim=2, levels=[1, 4])
    with pytest.raises(ValueError, match="multiple"):
        BSQ(20)
    with pytest.raises(ValueError):
        EMAVectorQuantizer(8, 16, dead_threshold=1.0)
    q = make("vq")
    with pytest.raises(ValueError, match="shape"):
        q(torch.randn(2, 5, D + 1))
    with pytest.raises(ValueError, match="mask"):
        q(torch.randn(2, 5, D), torch.ones(2, 5))  # float mask


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_gradient(kind):
    q = make(kind)
    q(*batch(q, seed=9))  # VQ: initialise the codebook from data first
    z, mask = batch(q)
    codes, z_q = q.encode(z, mask), q.decode(q.encode(z, mask))  # codebook before this step's EMA update
    z.requires_grad_(True)
    out = q(z, mask)
    assert torch.equal(out.codes, codes)
    assert torch.equal(out.z_q.detach(), z_q)  # forward value = quantized
    (out.z_q * torch.randn_like(out.z_q)).sum().backward()  # z_q only, not the loss
    g = z.grad.norm(dim=-1)  # [B, T]
    assert (g[mask] > 0).all()
    assert (g[~mask] == 0).all()  # padded frames get no gradient


def test_vq_commitment_loss_value():
    q = make("vq", beta=0.25, init_from_data=False)
    z, mask = batch(q)
    before = q.embed.clone()
    out = q(z, mask)
    zq = before[out.codes[:, 0]]  # [B, T, D], codebook before the EMA step
    expect = 0.25 * ((z - zq) ** 2).mean(-1)[mask].mean()
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-5)
    # and the loss pulls z toward its entry
    z2 = z.clone().requires_grad_(True)
    make("vq", beta=0.25, init_from_data=False)(z2, mask).loss.backward()
    assert torch.allclose(z2.grad[mask], (0.5 * (z - zq) / (mask.sum() * z.shape[-1]))[mask], atol=1e-6)


# ---- masking, batch independence, state ----


@pytest.mark.parametrize("kind", ["vq", "rvq"])
def test_padding_never_reaches_the_codebook(kind):
    runs = []
    for wild in (0.0, 1e4, None):  # None: no padding at all, the valid frames as one utterance
        q = make(kind, decay=0.5, dead_threshold=0.3)  # data init + frequent restarts
        q.train()
        losses, codes = [], []
        for step in range(4):
            z, mask = batch(q, seed=step)
            if wild is None:
                out = q(z[mask][None])
                codes.append(out.codes[0])
            else:
                g = torch.Generator().manual_seed(step)  # not the global RNG (restarts draw from it)
                z[~mask] = wild * torch.randn(int((~mask).sum()), q.dim, generator=g)
                out = q(z, mask)
                codes.append(out.codes.transpose(1, 2)[mask].T)  # [CN, N] codes of the valid frames
            losses.append(out.loss.item())
        runs.append((buffers(q), losses, codes))
    (a, la, ca), (b, lb, cb), (c, lc, cc) = runs
    assert same_state(a, b) and same_state(a, c)
    assert la == lb == pytest.approx(lc, rel=1e-6)
    assert all(torch.equal(x, y) and torch.equal(x, w) for x, y, w in zip(ca, cb, cc))
    # the EMA did learn something from the valid frames (so the comparison is not vacuous)
    fresh = make(kind, decay=0.5, dead_threshold=0.3)
    assert not same_state(a, buffers(fresh))


def test_ema_step_formula():
    q = EMAVectorQuantizer(2, 4, decay=0.9, eps=0.1, init_from_data=False, restart_every=0)  # big eps: visible
    with torch.no_grad():
        q.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]))
        q.embed_avg.copy_(q.embed)
    z = torch.tensor([[[1.0, 1.0], [9.0, 1.0], [11.0, -1.0], [99.0, 99.0]]])
    out = q(z, torch.tensor([[True, True, True, False]]))
    assert out.codes.tolist() == [[[0, 1, 1, 0]]]  # padded frame: code 0
    size = torch.tensor([0.9 + 0.1, 0.9 + 0.2, 0.9, 0.9])  # decay * 1 + (1 - decay) * count
    avg = 0.9 * torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    avg[0] += 0.1 * torch.tensor([1.0, 1.0])
    avg[1] += 0.1 * torch.tensor([20.0, 0.0])
    n = size.sum()
    smoothed = (size + 0.1) / (n + 4 * 0.1) * n  # Laplace smoothing
    assert torch.allclose(q.cluster_size, size) and torch.allclose(q.embed_avg, avg)
    assert torch.allclose(q.embed, avg / smoothed[:, None])


def test_ema_moves_codebook_toward_data():
    q = make("vq", decay=0.5, init_from_data=False, restart_every=0)
    centre = torch.full((D,), 4.0)
    z = centre + 0.1 * torch.randn(2, 16, D)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    z_wild = z.clone()
    z_wild[1, 10:] = -1e3  # padded frames far away on the other side
    used = q.encode(z, mask)[0, 0, 0].item()
    d0 = (q.embed[used] - centre).norm().item()
    for _ in range(3):
        q(z_wild, mask)
    d1 = (q.embed[used] - centre).norm().item()
    assert d1 < 0.2 * d0  # decay 0.5: 3 steps remove ~7/8 of the gap
    assert q.embed.abs().max() < 100  # nothing was pulled toward the -1e3 padding


@pytest.mark.parametrize("kind", ["vq", "vq_chunked", "rvq", "fsq", "bsq"])
@pytest.mark.parametrize("mode", ["eval_encode", "train_forward"])
def test_codes_independent_of_padding_and_batch(kind, mode):
    q = make(kind)
    q(*batch(q, seed=5))  # initialise VQ codebooks from data first
    torch.manual_seed(3)
    T = 9
    u = torch.randn(1, 6, q.dim)  # one utterance, 6 frames

    def codes_of_u(others, pad, row):
        z = others.clone()
        mask = torch.ones(z.shape[:2], dtype=torch.bool)
        z[row, :6] = u[0]
        z[row, 6:] = pad
        mask[row, 6:] = False
        if mode == "eval_encode":
            q.eval()
            codes = q.encode(z, mask)
        else:
            q.train()
            saved = buffers(q)
            codes = q(z, mask).codes
            q.load_state_dict(saved)  # same codebook for every call
        return codes[row, :, :6]

    alone = codes_of_u(torch.zeros(1, T, q.dim), 0.0, 0)  # [CN, 6]
    assert alone.shape == (CN[kind], 6) and alone[0].unique().numel() > 1  # not a constant code
    for others, pad, row in [
        (torch.randn(3, T, q.dim), 1e6, 1),
        (5 * torch.randn(5, T, q.dim), float("nan"), 4),
        (torch.randn(2, T, q.dim), -3.0, 0),
    ]:
        assert torch.equal(codes_of_u(others, pad, row), alone)


@pytest.mark.parametrize("kind", KINDS)
def test_encode_and_eval_forward_do_not_change_state(kind):
    q = make(kind)
    z, mask = batch(q)
    before = buffers(q)
    q.train()
    q.encode(z, mask)
    q.eval()
    q.encode(z, mask)
    out = q(z, mask)
    assert same_state(before, buffers(q))
    assert torch.equal(out.codes, q.encode(z, mask))
    assert torch.equal(out.z_q, q.decode(out.codes))
    if kind in ("vq", "rvq"):  # a training step does change the state
        q.train()
        q(z, mask)
        assert not same_state(before, buffers(q))


# ---- EMA VQ dynamics ----


def test_dead_code_restart_revives_unused_entries():
    def usage_after(restart_every):
        torch.manual_seed(0)
        q = EMAVectorQuantizer(4, 32, decay=0.5, dead_threshold=0.2, restart_every=restart_every, init_from_data=False)
        g = torch.Generator().manual_seed(0)
        first = restarted = None
        for _ in range(6):
            z = 10 + torch.randn(4, 32, 4, generator=g)  # far from the N(0, 1) initial codebook
            out = q(z)
            first = out.stats["usage"] if first is None else first
            restarted = (restarted or 0) + out.stats["restarted"]
        return first, q.encode(z)[:, 0], restarted

    first, codes_off, restarted_off = usage_after(0)
    _, codes_on, restarted_on = usage_after(1)
    usage_off = codes_off.unique().numel() / 32
    usage_on = codes_on.unique().numel() / 32
    assert first <= 3 / 32  # data far away: only a few entries are ever nearest
    assert restarted_off == 0 and usage_off <= 3 / 32
    assert restarted_on > 0 and usage_on >= 0.5


def test_data_init_and_running_stats():
    z = 3 + torch.randn(1, 40, 4)
    torch.manual_seed(0)
    out = EMAVectorQuantizer(4, 16, decay=0.9)(z)
    assert out.stats["usage"] == 1.0  # 40 frames >= 16 entries: every entry is one of the frames
    assert 0 < out.stats["ema_usage"] <= 1 and out.stats["ema_perplexity"] > 1
    torch.manual_seed(0)
    assert EMAVectorQuantizer(4, 16, decay=0.9, init_from_data=False)(z).stats["usage"] < 0.5


def test_rvq_more_stages_lower_error():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 64, D, generator=g)
    errs = []
    for cn in (1, 2, 4):
        torch.manual_seed(0)
        q = ResidualVQ(D, num_codebooks=cn, codebook_size=16, decay=0.8)
        for _ in range(5):
            q(z)
        q.eval()
        errs.append(((q.decode(q.encode(z)) - z) ** 2).mean().item())
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.8 * errs[0]


# ---- FSQ / BSQ specifics ----


def test_fsq_grid_round_trip_and_coverage():
    levels = [3, 4, 2, 5]  # odd and even
    q = FSQ(dim=4, levels=levels)
    n = math.prod(levels)
    assert q.codebook_size == n
    all_codes = torch.arange(n)[None, None, :]  # [1, 1, n]
    grid = q.decode(all_codes)  # [1, n, 4]
    assert grid.unique(dim=1).shape[1] == n  # n distinct points
    for i, L in enumerate(levels):  # each channel: L values, symmetric, spanning [-1, 1]
        vals = grid[0, :, i].unique()
        assert len(vals) == L and vals[0] == -1 and vals[-1] == 1
        assert torch.allclose(vals, -vals.flip(0))
    z = torch.atanh(0.99 * grid)  # inputs that land on every grid point
    assert torch.equal(q.encode(z), all_codes)  # covers range(prod(levels)), in order
    assert torch.equal(q(z).z_q, grid)  # exact on the grid
    zr = 3 * torch.randn(2, 50, 4)
    assert torch.equal(q.decode(q.encode(zr)), q(zr).z_q)
    assert FSQ(dim=2, levels=[2, 2]).decode(torch.arange(4)[None, None]).tolist() == [
        [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
    ]


def test_bsq_codes_match_speechbrain_and_lie_on_sphere():
    from speechbrain.lobes.models.bsq import BinarySphericalQuantizer

    q = BSQ(32)  # 2 codebooks of 16 bits
    z = torch.randn(2, 5, 32)
    z[:, :, 3] = 0.0  # an exact zero coordinate quantizes to -1 (bit 0), as in speechbrain
    out = q(z)
    assert torch.equal(q.encode(z), out.codes)
    sb = BinarySphericalQuantizer(16)
    for c in range(2):
        _, idx, _ = sb(z[..., 16 * c : 16 * (c + 1)])
        assert torch.equal(out.codes[:, c], idx.long())
    assert torch.allclose(out.z_q.norm(dim=-1), torch.ones(2, 5))
    assert torch.equal(torch.sign(out.z_q), torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(out.z_q.abs(), torch.full_like(z, 1 / math.sqrt(32)))


# ---- decode validation ----


@pytest.mark.parametrize("kind", KINDS)
def test_decode_rejects_bad_codes(kind):
    q = make(kind)
    cn, k = CN[kind], q.codebook_size
    good = torch.zeros(2, cn, 5, dtype=torch.long)
    q.decode(good)
    bad = [
        (good.clone().index_fill_(2, torch.tensor([3]), k), "codebook_size"),  # out of range
        (good.clone().index_fill_(2, torch.tensor([1]), -1), "negative"),
        (good.float(), "integer dtype"),
        (good.bool(), "integer dtype"),
        (good[:, 0], "shape"),
        (torch.zeros(2, cn + 1, 5, dtype=torch.long), "shape"),
        (good.tolist(), "torch.Tensor"),
    ]
    for codes, message in bad:
        with pytest.raises(ValueError, match=message):
            q.decode(codes)
    assert q.decode(good.int()).shape == (2, 5, q.dim)  # int32 is fine


# ---- usage statistics ----


def test_codebook_usage_hand_made():
    u = CodebookUsage(codebook_size=4)
    u.update(torch.tensor([[[0, 1, 0, 3]]]), mask=torch.tensor([[True, True, True, False]]))
    u.update(torch.tensor([[[1]]]))
    assert u.frames == 4
    assert u.usage == 0.5 and u.perplexity == pytest.approx(2.0)
    u.update(torch.tensor([[[0, 0]]]))  # counts 4:2 -> p = (2/3, 1/3)
    assert u.perplexity == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))
    two = CodebookUsage(codebook_size=4, num_codebooks=2)
    two.update(torch.tensor([[[0, 1, 2, 3], [2, 2, 2, 2]]]))
    assert two.usage_per_codebook.tolist() == [1.0, 0.25]
    assert two.perplexity_per_codebook.tolist() == pytest.approx([4.0, 1.0])
    assert two.usage == 0.625 and two.summary()["usage_1"] == 0.25
    empty = CodebookUsage(codebook_size=4)
    assert empty.usage == 0.0 and empty.perplexity == 0.0
    with pytest.raises(ValueError):
        u.update(torch.tensor([[[4]]]))
    u.reset()
    assert u.frames == 0


# ---- the paper-size codebook ----


def test_paper_size_vq_on_cpu():
    torch.manual_seed(0)
    q = EMAVectorQuantizer(32, 65536, init_from_data=False)
    assert q.chunk_rows * q.codebook_size <= 2**24  # distance chunk <= 64 MB
    z = torch.randn(3, 100, 32)
    before = q.embed.clone()
    out = q(z)  # training step: lookup + EMA + restart over 65,536 entries
    assert out.codes.shape == (3, 1, 100)
    x = z.reshape(-1, 32)[::10].double()  # brute-force float64 nearest neighbour on some frames
    assert torch.equal(out.codes.reshape(-1)[::10], torch.cdist(x, before.double()).argmin(1))
    out = EMAVectorQuantizer(32, 65536)(z)  # data init: each frame becomes an entry
    assert out.stats["usage"] == 300 / 65536


# ---- torch.distributed: ranks stay identical and match one process on the whole batch ----


def _run(q, z, rank=0, world=1):
    for step in range(z.shape[0]):
        q(z[step, rank::world])  # rank r sees utterances r, r + world, ...
    return {k: v.clone() for k, v in q.state_dict().items()}


def _dist_worker(rank, world, port, z, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different RNG streams on purpose
    with_restarts = EMAVectorQuantizer(4, 16, decay=0.8, restart_every=2, dead_threshold=0.3)  # data init
    torch.manual_seed(0)  # same initial codebook as the single-process reference
    plain = EMAVectorQuantizer(4, 16, decay=0.8, restart_every=0, init_from_data=False)
    torch.save(
        {"restarts": _run(with_restarts, z, rank, world), "plain": _run(plain, z, rank, world)}, f"{out_dir}/{rank}.pt"
    )
    dist.destroy_process_group()


def test_distributed_ranks_stay_identical(tmp_path):
    z = torch.randn(4, 4, 10, 4)  # [steps, B, T, D]
    # fork (not spawn): the children reuse this process's imports, ~1 s instead of ~7 s
    mp.start_processes(_dist_worker, args=(2, free_port(), z, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    a, b = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert same_state(a["restarts"], b["restarts"]) and same_state(a["plain"], b["plain"])
    assert int(a["restarts"]["steps"]) == 4 and bool(a["restarts"]["initted"])
    torch.manual_seed(0)
    single = _run(EMAVectorQuantizer(4, 16, decay=0.8, restart_every=0, init_from_data=False), z)
    assert all(torch.allclose(single[k].float(), a["plain"][k].float(), atol=1e-5) for k in single)


def test_cosine_vq_keeps_unit_norm_entries_and_ignores_scale():
    q = make("vq", normalize=True, init_from_data=False)  # random entries: no duplicate (tied) entries
    z, mask = batch(q)
    for _ in range(3):
        q(z, mask)
    torch.testing.assert_close(q.embed.norm(dim=-1), torch.ones(K))
    q.eval()
    assert torch.equal(q.encode(z, mask)[mask[:, None, :]], q.encode(5.0 * z, mask)[mask[:, None, :]])
    sim = (torch.nn.functional.normalize(z, dim=-1) @ q.embed.t())[mask]  # [N, K] cosine similarities
    chosen = sim.gather(1, q.encode(z, mask)[:, 0][mask][:, None])[:, 0]
    torch.testing.assert_close(chosen, sim.max(-1).values)  # (entries may repeat after data init: ties)


def test_model_drops_quantizer_kwargs_that_do_not_apply():
    from sitok.models import SiTok, SiTokConfig

    cfg = SiTokConfig(
        hidden=32,
        intermediate=64,
        heads=2,
        enc_layers=1,
        dec_layers=1,
        ctc_layers=1,
        quantizer="fsq",
        codebook_dim=5,
        codebook_size=1024,
        quantizer_kwargs={"levels": [4] * 5, "dead_threshold": 0.5},
    )
    m = SiTok(cfg)
    assert m.quantizer.codebook_size == 1024
    with pytest.raises(ValueError, match="1024"):
        SiTok(SiTokConfig(**{**cfg.to_dict(), "codebook_size": 512}))


def _clustered(k: int, per: int, dim: int = 4, seed: int = 0):
    """k well-separated centres and ``per`` frames around each: [k * per, dim], centres [k, dim]."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, dim, generator=g)
    frames = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(k * per, dim, generator=g)
    return frames[torch.randperm(k * per, generator=g)], centres


def test_kmeans_finds_separated_clusters_and_handles_few_frames():
    from sitok.quantizers.vq import kmeans

    frames, centres = _clustered(16, 50)
    c, stats = kmeans(frames, 16, iters=20, seed=0)
    nearest_centre = torch.cdist(centres, c).min(dim=1).values
    assert stats["used"] == 1.0 and stats["frames"] == 800
    assert int((nearest_centre < 0.1).sum()) >= 15  # random starts can merge at most a pair of clusters
    assert stats["mse"] < 0.1 * frames.var(0).sum()
    few, _ = kmeans(frames[:10], 16, iters=3, seed=0)  # fewer frames than entries: all kept, no NaN
    assert few.shape == (16, 4) and torch.isfinite(few).all()
    with pytest.raises(ValueError, match="kmeans needs frames"):
        kmeans(frames[:0], 4)


def test_init_kmeans_starts_a_fully_used_codebook():
    frames, _ = _clustered(32, 30)
    q = EMAVectorQuantizer(4, 32, decay=0.99)
    assert not bool(q.initted)
    q.init_kmeans(frames, iters=20)
    assert bool(q.initted) and torch.equal(q.embed, q.embed_avg) and bool((q.cluster_size == 1).all())
    out = q(frames[None])  # training step: no data-init overwrite, every entry is somebody's nearest
    assert out.stats["usage"] >= 0.9 and out.stats["restarted"] == 0
    rvq = ResidualVQ(4, num_codebooks=2, codebook_size=32)
    stats = rvq.init_kmeans(frames, iters=10)
    assert all(bool(s.initted) for s in rvq.stages) and stats["mse_1"] < stats["mse_0"]


def test_relative_restart_threshold_does_not_churn_live_entries():
    """64 clusters used with Zipf frequencies (as codes are), 45 frames per step, 64 entries: ~0.7
    frames per entry per step on average, the rarest cluster ~0.15. An absolute threshold of 0.5
    restarts those live entries again and again; the relative one restarts none."""
    frames, centres = _clustered(64, 50, seed=1)
    zipf = 1.0 / torch.arange(1, 65, dtype=torch.float)

    def restarts(**kw):
        torch.manual_seed(0)
        q = EMAVectorQuantizer(4, 64, decay=0.99, **kw)
        q.init_kmeans(frames, iters=20)
        g = torch.Generator().manual_seed(2)
        total = 0
        for _ in range(300):
            idx = torch.multinomial(zipf, 45, replacement=True, generator=g)
            batch = centres[idx] + 0.05 * torch.randn(45, 4, generator=g)
            total += q(batch[None]).stats["restarted"]
        return total, q

    churn, _ = restarts(dead_threshold=0.5)
    calm, q = restarts(dead_threshold=1e-3, dead_relative=0.03)
    assert churn > 30 and calm == 0
    q.unused_frames.zero_()
    q.unused_frames[:3] = 64 / 0.03 + 1  # unchosen for longer than K / r frames: dead
    q.unused_frames[3] = 64 / 0.03 - 1
    assert q.dead_entries().nonzero().flatten().tolist() == [0, 1, 2]
    # an entry nobody chooses is restarted after ~K / r frames, not after its EMA count has decayed
    far = 100 + torch.randn(1, 45, 4)
    q.init_kmeans(torch.cat([frames, far[0]]), iters=20)
    steps = 0
    while q(frames[torch.randperm(len(frames))[:45]][None]).stats["restarted"] == 0:
        steps += 1
    assert 64 / 0.03 / 45 - 2 <= steps <= 64 / 0.03 / 45 + 2
    with pytest.raises(ValueError, match="dead_relative"):
        EMAVectorQuantizer(4, 8, dead_relative=1.5)


def test_models_saved_before_the_unused_counter_still_load():
    q = EMAVectorQuantizer(4, 8)
    state = {k: v for k, v in q.state_dict().items() if k != "unused_frames"}
    fresh = EMAVectorQuantizer(4, 8)
    fresh.unused_frames.fill_(5.0)
    fresh.load_state_dict(state)  # strict: no missing-key error
    assert torch.equal(fresh.embed, q.embed) and not fresh.unused_frames.any()
