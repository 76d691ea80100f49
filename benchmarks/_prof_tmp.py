import sys, time, torch
sys.path.insert(0, "benchmarks")
from generation_bench import build
from nlhf_torch.generation import generate_pairs
from transformers import DynamicCache
dev = "cuda"
p = build(0, 32000, 512, 8, dev); r = build(1, 32000, 512, 8, dev)
ids = torch.randint(3, 32000, (16, 20), device=dev); mask = torch.ones_like(ids)
kw = dict(beta=0.5, max_new_tokens=128, temperature=1.0, eos_token_id=None, pad_token_id=0)
def raw(model, rows):
    with torch.no_grad():
        c = DynamicCache(); am = mask[:1].repeat(rows, 1); x = ids[:1].repeat(rows,1)
        o = model(input_ids=x, attention_mask=am, past_key_values=c, use_cache=True, logits_to_keep=1)
        for i in range(127):
            am = torch.cat([am, torch.ones(rows,1,dtype=am.dtype, device=dev)],1)
            o = model(input_ids=x[:, :1], attention_mask=am, position_ids=am.sum(-1,keepdim=True)-1, past_key_values=c, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
for f, name in [(lambda: generate_pairs(p, r, ids, mask, **kw), "engine"), (lambda: (raw(p, 32), raw(r, 16)), "raw policy32+ref16"), (lambda: raw(p, 32), "raw policy32")]:
    f(); torch.cuda.synchronize(); t=time.perf_counter(); f(); torch.cuda.synchronize(); print(name, time.perf_counter()-t)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    generate_pairs(p, r, ids, mask, **kw)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
