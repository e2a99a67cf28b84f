"""The int8 scheme blip2 applies to a language model's `Linear` weights, replayed in torch (see docs/numerics.md)."""

from __future__ import annotations

import torch

from .common import MAX_NEW_TOKENS, Refs, margin_ok


# ----------------------------------------------------------------------------------------------------------------
# BLIP-2 with an LM (tiny-opt, tiny-t5)
# ----------------------------------------------------------------------------------------------------------------


def q8_group_for(n: int, group: int) -> int | None:
    """blip2's rule: `group` when it divides `n`, else the largest smaller multiple of 16 that does (at most 240)."""
    for g in range(min(group, 240) // 16, 0, -1):
        if n % (g * 16) == 0:
            return g * 16
    return None


Q8_ACT_BLOCK = 128  # inputs per activation scale (blip2_nn::kernels::Q8_ACT_BLOCK)


def quantize_q8(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """blip2's int8 weights for a PyTorch-layout [out, in] weight: in the [in, out] orientation, one scale per block
    of `group` consecutive outputs of each input, scale = max|w| / 127 (1 when not a normal float),
    q = round-half-even(w / scale) clamped to [-127, 127]. Returns q [in, out] and the scales [in, out / group]."""
    wt = weight.detach().t().contiguous().float()
    k, n = wt.shape
    blocks = wt.reshape(k, n // group, group)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    normal = torch.isfinite(scale) & (scale >= torch.finfo(torch.float32).tiny)
    scale = torch.where(normal, scale, torch.ones_like(scale))
    q = torch.round(blocks / scale).clamp(-127, 127)
    return q.reshape(k, n), scale.reshape(k, n // group)


def q8_product(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """blip2's int8 product (blip2_nn::kernels::linear_q8): the weight's scales move onto the activations, which
    are quantized per block of Q8_ACT_BLOCK inputs and group (t = amax / 127, p = round-half-even(a * (127 / amax))
    clamped to [-127, 127]); the integer sums are exact; each block adds fma(S, t, y) in f32 (here in f64, rounded
    once), block after block."""
    k, n = q.shape
    shape = x.shape
    x2 = x.reshape(-1, k).float()
    m = x2.shape[0]
    tiny = torch.finfo(torch.float32).tiny
    y = torch.zeros(m, n, dtype=torch.float32)
    for l0 in range(0, k, Q8_ACT_BLOCK):
        l1 = min(l0 + Q8_ACT_BLOCK, k)
        a = x2[:, l0:l1, None] * scales[None, l0:l1, :]  # [m, block, groups], f32
        bad = torch.isnan(a).any(dim=1)
        amax = torch.nan_to_num(a.abs(), nan=0.0).amax(dim=1)
        bad = bad | torch.isinf(amax)
        t = amax / 127.0
        normal = t >= tiny
        r = torch.where(normal, 127.0 / amax, torch.ones_like(amax))
        t = torch.where(normal, t, torch.ones_like(t))
        t = torch.where(bad, torch.full_like(t, float("nan")), t)
        r = torch.where(bad, torch.zeros_like(r), r)
        p = torch.round(a * r[:, None, :]).clamp(-127, 127)
        p = torch.where(bad[:, None, :], torch.zeros_like(p), p)
        sums = torch.einsum("mln,ln->mn", p.repeat_interleave(group, dim=2).double(), q[l0:l1].double())
        y = (sums * t.repeat_interleave(group, dim=1).double() + y.double()).float()
    return y.reshape(*shape[:-1], n)


def quantize_lm_linears(model, group: int) -> dict[str, int]:
    """Makes every nn.Linear of the language model run blip2's int8 product (weights quantized once, activations per
    call); returns name -> group."""
    done = {}
    embeddings = model.language_model.get_input_embeddings()
    for name, module in model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            g = q8_group_for(module.out_features, group)
            if g is None:
                continue
            q, scales = quantize_q8(module.weight, g)
            if module.weight is embeddings.weight:
                # A tied head in int8 (OPT) replaces the embedding table in blip2 (`embeddings_from_head`): the
                # lookups read its int8 values, q * scale in f32.
                dequantized = (q * scales.repeat_interleave(g, dim=1)).t().contiguous()
                embeddings.weight = torch.nn.Parameter(dequantized, requires_grad=False)

            def forward(x, q=q, scales=scales, g=g, bias=module.bias):
                y = q8_product(x, q, scales, g).to(x.dtype)
                return y if bias is None else y + bias

            module.forward = forward
            done[f"language_model.{name}"] = g
    return done


def add_int8_refs(refs: Refs, model, pixel_values, single, is_t5: bool, group: int, labels=None) -> dict:
    """References for `Precision` with the language model's Linear layers in int8: the model with those layers
    running blip2's int8 product (int8 weights, activations quantized per call, exact integer sums; see
    `q8_product`). Changes `model` in place: call last."""
    quantized = quantize_lm_linears(model, group)
    with torch.no_grad():
        kwargs = {"labels": labels[:1]} if is_t5 else {}
        out = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                    attention_mask=single["attention_mask"], **kwargs)
        refs.add("int8/lm/logits/single", out.logits, "lm/logits/single with the LM's Linear layers in int8")
        g = model.generate(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                           attention_mask=single["attention_mask"], max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                           num_beams=1, output_logits=True, return_dict_in_generate=True)
        refs.add("int8/gen/greedy/single", g.sequences, "greedy ids with the LM's Linear layers in int8")
        refs.add("int8/gen/greedy/single/logits", torch.stack(g.logits), "their raw step logits")
    return {"group": group, "quantized": quantized, "min_greedy_margin": margin_ok(list(g.logits))}
