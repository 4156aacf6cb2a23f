"""Packed documents are independent; the chunked loss equals plain cross-entropy without full logits."""

import torch
import torch.nn.functional as F

from zaya_vl.lm import ZayaLM
from zaya_vl.lm.loss import causal_lm_loss
from zaya_vl.testing import randomize_, tiny_lm_config


@torch.no_grad()
def test_packed_row_equals_documents_run_separately():
    model = randomize_(ZayaLM(tiny_lm_config(layer_types=["hybrid", "hybrid_sliding", "hybrid"], sliding_window=4,
                                             cca_time0=3)), seed=2, std=0.3).eval()
    docs = [torch.randint(3, 160, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 1, 6)]
    packed = torch.cat(docs)[None]
    segment_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    logits = model(packed, segment_ids=segment_ids, use_cache=False).logits[0]
    start = 0
    for doc in docs:
        alone = model(doc[None], use_cache=False).logits[0]
        torch.testing.assert_close(logits[start:start + len(doc)], alone, atol=1e-4, rtol=0)
        start += len(doc)


def test_packed_loss_is_the_sum_of_per_document_losses():
    model = randomize_(ZayaLM(tiny_lm_config()), seed=3).eval()
    docs = [torch.randint(3, 160, (n,), generator=torch.Generator().manual_seed(10 + n)) for n in (7, 4, 8)]
    packed = torch.cat(docs)[None]
    segment_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    packed_sum = model(packed, labels=packed, segment_ids=segment_ids, use_cache=False,
                       loss_chunk_size=5).loss * sum(len(d) - 1 for d in docs)
    separate_sum = sum(model(d[None], labels=d[None], use_cache=False).loss * (len(d) - 1) for d in docs)
    torch.testing.assert_close(packed_sum, separate_sum, atol=1e-4, rtol=1e-5)


def test_chunked_loss_and_gradients_equal_plain_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 13, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (2, 13), generator=generator)
    labels[0, :4] = -100
    loss = causal_lm_loss(hidden, weight, labels, chunk_size=5)
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = hidden @ weight.t()
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)
