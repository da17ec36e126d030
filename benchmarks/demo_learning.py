"""What a tiny from-scratch Qwen3-VL learns from the synthetic world in a few hundred steps: the
sweep behind `avcap demo`'s sizes (issue 8). Not a test; figures in benchmarks/RESULTS.md.

    python3 benchmarks/demo_learning.py --render 400            # render 400 clips (160x96, 4 s, 4 fps)
    python3 benchmarks/demo_learning.py --model DIR --ntrain 240 --neval 40 \
        --only sd02,sd03,ko02,ci01,am01,eb02,st03 --pack 7 --cap_frac 0.4 --loss sample --nframes 8 \
        --steps 400 --eval_every 100 [--device cpu --eval_cpu 1]

A stripped-down copy of the demo's training (same model, processor, prompts, pool questions and
world-truth answers; AdamW, warm-up + cosine) that keeps the frames in memory and evaluates on
held-out videos by the answer letter's logit, so a configuration runs in 1-3 minutes on a GPU
(fp32, TF32 off: the same dynamics as the CPU). Options: `--only` a question subset; `--pack K`
asks K of a video's questions as one multi-turn conversation; `--cap_frac` share of caption
samples (the human annotation as target); `--loss token|sample` (cosmos-rl's token mean, or
avcap's per-sample mean); `--balance` draws answers uniformly per question. Prints overall and
per-category accuracy, the accuracy where the blind prior (each question's most frequent training
answer) is wrong, and per question model vs blind prior at the end.
"""
import argparse, json, os, random, time
from collections import Counter, defaultdict
from multiprocessing import Pool

import numpy as np
import torch

DATA = os.environ.get("AVCAP_DEMO_LEARNING_DATA", "/tmp/avcap-demo-learning")


def render(i):
    from avcap.demo.synth.world import sample_scene
    from avcap.demo.synth.render import render_frames
    p = f"{DATA}/{i}.npy"
    if os.path.exists(p):
        return i
    r = sample_scene(5000 + i, duration_s=4.0, fps=4.0, width=160, height=96)
    np.save(p, np.stack(list(render_frames(r))))
    open(f"{DATA}/{i}.json", "w").write(r.model_dump_json())
    return i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", type=int, default=0)
    ap.add_argument("--ntrain", type=int, default=240); ap.add_argument("--neval", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300); ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--model", default="/tmp/avcap-demo-learning-model")
    ap.add_argument("--eval_every", type=int, default=50); ap.add_argument("--qpv", type=int, default=50)
    ap.add_argument("--cap_frac", type=float, default=0.0, help="share of caption samples in a batch")
    ap.add_argument("--loss", default="token", help="token | sample")
    ap.add_argument("--device", default="cuda"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default=""); ap.add_argument("--eval_cpu", type=int, default=0)
    ap.add_argument("--balance", type=int, default=0); ap.add_argument("--qset", default=""); ap.add_argument("--qmix", type=float, default=1.0); ap.add_argument("--evalq", default=""); ap.add_argument("--size", default=""); ap.add_argument("--pack", type=int, default=1); ap.add_argument("--only", default="")
    a = ap.parse_args()
    os.makedirs(DATA, exist_ok=True)
    if a.render:
        t = time.time()
        with Pool(os.cpu_count()) as p:
            list(p.imap_unordered(render, range(a.render)))
        print(f"rendered {a.render} in {time.time()-t:.1f}s", flush=True)
        return
    from transformers import AutoProcessor, AutoModelForImageTextToText
    from avcap.bench.pool import load_pool, format_question
    from avcap.bench.select import select_questions
    from avcap.demo import truth
    from avcap.demo.synth.scene import SceneRecord
    from avcap.demo.synth import annotate as A
    from avcap.core.config import Prompts
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(a.device)
    if a.size or not os.path.isdir(a.model):
        from avcap.demo.tiny_model import build_tiny_model
        a.model = str(build_tiny_model(f"/tmp/model_{a.size or 'tiny'}", size=a.size or "tiny", seed=0))
    proc = AutoProcessor.from_pretrained(a.model)
    model = AutoModelForImageTextToText.from_pretrained(a.model, attn_implementation="sdpa").to(dev)
    pool = load_pool(); P = Prompts()
    N = a.ntrain + a.neval
    recs = [SceneRecord.model_validate_json(open(f"{DATA}/{i}.json").read()) for i in range(N)]
    idx = np.linspace(0, 15, a.nframes).round().astype(int)
    md = {"fps": 4.0, "frames_indices": idx.tolist(), "total_num_frames": 16, "duration": 4.0}
    pix = []
    for i in range(N):
        fr = np.load(f"{DATA}/{i}.npy")[idx]
        o = proc.video_processor(videos=[fr], video_metadata=[md], do_sample_frames=False, do_resize=False, return_tensors="pt")
        pix.append(o["pixel_values_videos"]); grid = o["video_grid_thw"]
    fr0 = np.load(f"{DATA}/0.npy")[idx]
    prefix = {}
    def add_prefix(key, text):
        msgs = [{"role": "system", "content": P.system}, {"role": "user", "content": [{"type": "video", "video": "x"}, {"type": "text", "text": text}]}]
        t = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        o = proc(text=[t], videos=[fr0], video_metadata=[md], do_sample_frames=False, do_resize=False, return_tensors="pt")
        prefix[key] = (o["input_ids"][0], o["mm_token_type_ids"][0])
    qtext = {}
    for q in pool.questions:
        add_prefix(q.id, format_question(q, P.mcq_suffix))
        qtext[q.id] = torch.tensor(proc.tokenizer("\n<|im_start|>user\n" + format_question(q, P.mcq_suffix) + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    add_prefix("caption", P.caption)
    tok = proc.tokenizer
    letter_ids = [tok.convert_tokens_to_ids(tok.tokenize(L))[0] for L in "ABCD"]
    LID = torch.tensor(letter_ids)
    def tgt(text):
        return torch.tensor(tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"])
    def items(vids, qpv):
        out = []
        for v in vids:
            qs = pool.questions if qpv >= 50 else select_questions(pool, recs[v].video_id, seed=0, questions_per_video=qpv)
            for q in qs:
                L = truth.answer(recs[v], q.id)
                out.append((v, q.id, q.category, "ABCD".index(L), tgt(L)))
        return out
    train = items(range(a.ntrain), a.qpv); ev = items(range(a.ntrain, N), 12)
    if a.only:
        OQ = set(a.only.split(","))
        train = [it for it in items(range(a.ntrain), 50) if it[1] in OQ]
        ev = [it for it in items(range(a.ntrain, N), 50) if it[1] in OQ]
    if a.evalq:
        ev = [it for it in items(range(a.ntrain, N), 50) if it[1] in a.evalq.split(",")]
    caps = [(v, "caption", None, None, tgt(json.dumps(A.human_annotation(recs[v]), ensure_ascii=False))) for v in range(a.ntrain)]
    print(f"[{a.tag}] train {len(train)} eval {len(ev)} caption target tokens mean {np.mean([len(c[4]) for c in caps]):.0f}", flush=True)
    cnt = defaultdict(Counter)
    for v, q, c, y, _ in train: cnt[q][y] += 1
    prior_hit = [cnt[q].most_common(1)[0][0] == y for v, q, c, y, _ in ev]
    print(f"[{a.tag}] blind prior baseline on eval: {np.mean(prior_hit):.3f}", flush=True)
    pad = tok.pad_token_id

    def eval_batch(its):
        L = max(len(prefix[q][0]) for _, q, *_ in its)
        ids = torch.full((len(its), L), pad); att = torch.zeros((len(its), L), dtype=torch.long); mm = torch.zeros_like(att)
        for i, (v, q, *_) in enumerate(its):
            t, m = prefix[q]; ids[i, L-len(t):] = t; att[i, L-len(t):] = 1; mm[i, L-len(t):] = m
        return dict(input_ids=ids.to(dev), attention_mask=att.to(dev), mm_token_type_ids=mm.to(dev),
                    pixel_values_videos=torch.cat([pix[v] for v, *_ in its]).to(dev), video_grid_thw=grid.repeat(len(its), 1).to(dev))

    def train_batch(its):
        seqs = []
        for it in its:
            if isinstance(it, list):
                v, q, c, y, t = it[0]
                p, m = prefix[q]
                ids_, mm_, lab_ = [p, t], [m, torch.zeros_like(t)], [torch.full_like(p, -100), t]
                for v2, q2, c2, y2, t2 in it[1:]:
                    u = qtext[q2]
                    ids_ += [u, t2]; mm_ += [torch.zeros_like(u), torch.zeros_like(t2)]; lab_ += [torch.full_like(u, -100), t2]
                seqs.append((torch.cat(ids_), torch.cat(mm_), torch.cat(lab_)))
                continue
            v, q, c, y, t = it
            p, m = prefix[q]
            seqs.append((torch.cat([p, t]), torch.cat([m, torch.zeros_like(t)]), torch.cat([torch.full_like(p, -100), t])))
        L = max(len(s[0]) for s in seqs)
        ids = torch.full((len(its), L), pad); att = torch.zeros((len(its), L), dtype=torch.long); mm = torch.zeros_like(att); lab = torch.full((len(its), L), -100)
        for i, (s, m, l) in enumerate(seqs):
            ids[i, :len(s)] = s; att[i, :len(s)] = 1; mm[i, :len(s)] = m; lab[i, :len(s)] = l
        b = dict(input_ids=ids.to(dev), attention_mask=att.to(dev), mm_token_type_ids=mm.to(dev),
                 pixel_values_videos=torch.cat([pix[(it[0] if isinstance(it, list) else it)[0]] for it in its]).to(dev), video_grid_thw=grid.repeat(len(its), 1).to(dev))
        return b, lab.to(dev)

    def evaluate(final=False):
        model.eval(); by = defaultdict(list); wrong_prior = []; perq = defaultdict(list)
        with torch.no_grad():
            for s in range(0, len(ev), 32):
                its = ev[s:s+32]; out = model(**eval_batch(its))
                pred = out.logits[:, -1, :][:, LID.to(dev)].argmax(-1).tolist()
                for k, ((v, q, c, y, _), p) in enumerate(zip(its, pred)):
                    by[c].append(p == y); perq[q].append((p == y, prior_hit[s + k]))
                    if not prior_hit[s + k]: wrong_prior.append(p == y)
        model.train()
        allv = [x for l in by.values() for x in l]
        if final:
            rows = sorted(((np.mean([a for a, _ in l]) - np.mean([b for _, b in l]), q, len(l), np.mean([a for a, _ in l]), np.mean([b for _, b in l])) for q, l in perq.items()), reverse=True)
            print("  per-question (model - blind): " + " ".join(f"{q}:{m:.2f}/{b:.2f}(n{n})" for d, q, n, m, b in rows[:12]), flush=True)
            if a.qset:
                sel = [(q, n, m, b) for d, q, n, m, b in rows if q in a.qset.split(",")]
                print("  focus questions: " + " ".join(f"{q}:{m:.2f}/{b:.2f}(n{n})" for q, n, m, b in sel), flush=True)
                print("  focus mean model %.3f blind %.3f" % (np.mean([m for q,n,m,b in sel for _ in range(n)]), np.mean([b for q,n,m,b in sel for _ in range(n)])), flush=True)
        return f"acc {np.mean(allv):.3f} prior-wrong {np.mean(wrong_prior):.3f} " + " ".join(f"{c[:6]}={np.mean(l):.2f}" for c, l in by.items())

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    W = max(1, int(0.03 * a.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (k + 1) / W if k < W else 0.5 * (1 + np.cos(np.pi * (k - W) / max(1, a.steps - W))))
    rng = random.Random(0); losses = []
    t0 = time.time(); t5 = t0
    ncap = int(round(a.cap_frac * a.bs))
    byqy = defaultdict(list)
    for it in train: byqy[(it[1], it[3])].append(it)
    qys = defaultdict(list)
    for (q, y) in byqy: qys[q].append(y)
    qlist = sorted(qys)
    qset = set(a.qset.split(",")) if a.qset else set()
    focus = [it for it in train if it[1] in qset]
    byv = defaultdict(list)
    for it in train: byv[it[0]].append(it)
    vids_ = sorted(byv)
    def draw(n):
        if a.pack > 1:
            return [rng.sample(byv[v], min(a.pack, len(byv[v]))) for v in (rng.choice(vids_) for _ in range(n))]
        if qset:
            k = sum(rng.random() < a.qmix for _ in range(n))
            return rng.sample(focus, k) + rng.sample(train, n - k)
        if not a.balance: return rng.sample(train, n)
        out = []
        for _ in range(n):
            q = rng.choice(qlist); y = rng.choice(qys[q]); out.append(rng.choice(byqy[(q, y)]))
        return out
    for step in range(1, a.steps + 1):
        its = draw(a.bs - ncap) + (rng.sample(caps, ncap) if ncap else [])
        b, lab = train_batch(its)
        out = model(**b)
        logits = out.logits[:, :-1].float(); tgt_ = lab[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_.reshape(-1), reduction="none").view(tgt_.shape)
        mask = (tgt_ != -100).float()
        if a.loss == "token":
            loss = (ce * mask).sum() / mask.sum()
        else:
            loss = ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()
        losses.append(loss.item())
        if a.device == "cpu" and step == 5:
            t5 = time.time()
        if step % a.eval_every == 0 or step == a.steps:
            msg = f"[{a.tag}] step {step} loss {np.mean(losses[-a.eval_every:]):.3f} t {time.time()-t0:.0f}s"
            if a.device == "cpu":
                msg += f" s/step(after 5) {(time.time()-t5)/max(1, step-5):.2f}"
                print(msg + (" " + evaluate(step == a.steps) if a.eval_cpu else ""), flush=True)
            else:
                print(msg + " " + evaluate(step == a.steps), flush=True)


if __name__ == "__main__":
    main()
