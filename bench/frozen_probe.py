"""How much of a task a checkpoint's frozen features hold: logistic regression on [CLS], the token mean, the pooler.

    OMP_NUM_THREADS=1 .venv/bin/python bench/frozen_probe.py --task cola

Features of the train and dev sentences from the model as it is (no fine-tuning); a class-balanced
logistic regression on each kind; the dev score by the task's metric (MCC for CoLA, else accuracy).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, matthews_corrcoef

from bertkit import Tokenizer
from bertkit.heads import BertModel
from bertkit.tasks.datasets import TASKS


def features(model, tok, texts: list[str], batch: int = 128) -> dict[str, np.ndarray]:
    out: dict[str, list] = {"cls": [], "mean": [], "pooler": []}
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, return_tensors="pt")
            hidden, pooled = model(**enc)[:2]  # [batch, seq, hidden], [batch, hidden]
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out["cls"].append(hidden[:, 0])
            out["mean"].append((hidden * mask).sum(1) / mask.sum(1))
            out["pooler"].append(pooled)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="cola", help="a single-sentence classification task: cola or sst2")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    a = p.parse_args()
    task = TASKS[a.task]
    train, dev = task.examples("train"), task.examples("dev")
    tok, model = Tokenizer.from_pretrained(a.model), BertModel.from_pretrained(a.model).eval()
    x_train = features(model, tok, [ex.text for ex in train])
    x_dev = features(model, tok, [ex.text for ex in dev])
    y_train, y_dev = np.array([ex.label for ex in train]), np.array([ex.label for ex in dev])
    score, name = (matthews_corrcoef, "MCC") if task.metric == "mcc" else (accuracy_score, "accuracy")
    for kind in ("cls", "mean", "pooler"):
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x_train[kind], y_train)
        print(f"{a.task} {kind:6s} dev {name} {score(y_dev, clf.predict(x_dev[kind])):.4f}")


if __name__ == "__main__":
    main()
