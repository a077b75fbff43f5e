"""The key/value cache's torch forms of one-query attention against SDPA over the same keys and
values (the native form: test_native.py)."""

import pytest
import torch
import torch.nn.functional as F

from methods.transformer import KVCache


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("batch", [2, 64])  # 2 x 4 heads: SDPA; 64 x 4: the matrix-product form
# head_dim 8: every step padded to the 9 tokens (BLAS needs 50 keys); head_dim 24: the first 17
@pytest.mark.parametrize("tokens,d", [(9, 8), (20, 24)])
# bfloat16: a flow cast to it (no autocast) decodes too; the causal mask takes the cache's
# dtype, which the matrix-product form's baddbmm requires (a float32 mask raised there)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_attention_equals_sdpa_over_the_filled_positions(batch, static, tokens, d, dtype):
    heads = 4
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.02, atol=0.02)
    g = torch.Generator().manual_seed(0)
    kv = torch.randn(tokens, batch, 2, heads, d, generator=g).to(dtype)  # what each step writes
    cache = KVCache(batch, heads, tokens, d, kv, static, kernel="torch")
    for t in range(tokens):
        pos = torch.tensor([t]) if static else t
        cache.write(pos, kv[t])
        q = torch.randn(batch, heads, d, generator=g).to(dtype)
        k, v = kv[: t + 1].permute(2, 1, 3, 0, 4).float()  # (2, b, h, t + 1, d) -> keys, values
        want = F.scaled_dot_product_attention(q.float()[:, :, None], k, v)[:, :, 0]
        got = cache.attend(q, pos)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, **tol)
