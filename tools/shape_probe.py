#!/usr/bin/env python3
"""Is shape in the frozen features? Ridge probes (one-vs-rest, closed form) of each object's shape
and colour on the generated shapes set: raw pixels against the frozen encoder's cached features
(all tokens, the mean of the patch tokens, the class token). Objects are ordered left/upper
first, read from the caption. Needs numpy and pillow; the cache is an f32 one:

    qformer cache-features --set data.cache.dir=target/probe-cache --set data.cache.dtype=f32
    python3 tools/shape_probe.py target/probe-cache [data/shapes]
"""
import json
import os
import sys

import numpy as np
from PIL import Image
cache = sys.argv[1]
root = (sys.argv[2] if len(sys.argv) > 2 else 'data/shapes').rstrip('/') + '/'
SH = ['circle', 'square', 'triangle']; COL = ['red','green','blue','yellow','purple','white']
def parse(c):
    w = c.split()
    # a SIZE COLOR SHAPE rel... a SIZE COLOR SHAPE
    a = (w[1], w[2], w[3]); rel = ' '.join(w[4:-4]); b = (w[-3], w[-2], w[-1])
    first_is_a = rel in ('left of', 'above')
    return (a, b) if first_is_a else (b, a)
def load(split):
    ann = json.load(open(root + split + '.json'))
    idx = json.load(open(f'{cache}/{split}.json'))
    T, W = idx['tokens'], idx['width']
    feats = np.memmap(f'{cache}/{split}.bin', dtype='<f4', mode='r').reshape(-1, T, W)
    X, P, Y = [], [], []
    for r in ann:
        path = root + r['image']
        row = idx['rows'][next(k for k in (path, os.path.abspath(path)) if k in idx['rows'])]
        X.append(np.array(feats[row]))
        P.append(np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 255.0)
        o1, o2 = parse(r['caption'][0])
        Y.append([SH.index(o1[2]), SH.index(o2[2]), COL.index(o1[1]), COL.index(o2[1])])
    return np.stack(X), np.stack(P), np.array(Y)
def ridge(Xtr, Ytr, Xte, lam):
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    A, B = (Xtr - mu) / sd, (Xte - mu) / sd
    K = A @ A.T; Kte = B @ A.T
    onehot = lambda y, n: np.eye(n)[y]
    out = []
    for j, n in [(0, 3), (1, 3), (2, 6), (3, 6)]:
        T = onehot(Ytr[:, j], n) - 1.0 / n
        alpha = np.linalg.solve(K + lam * np.eye(len(K)), T)
        out.append((Kte @ alpha).argmax(1))
    return np.stack(out, 1)
Xtr, Ptr, Ytr = load('train'); Xte, Pte, Yte = load('eval')
print('features', Xtr.shape, 'pixels', Ptr.shape)
views = {
    'pixels': (Ptr.reshape(len(Ptr), -1), Pte.reshape(len(Pte), -1)),
    'features, all tokens': (Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)),
    'features, mean of patch tokens': (Xtr[:, 1:].mean(1), Xte[:, 1:].mean(1)),
    'features, CLS token': (Xtr[:, 0], Xte[:, 0]),
}
for name, (a, b) in views.items():
    for lam in [1e0, 1e2, 1e4]:
        lam_s = lam * a.shape[1] / 1000
        pred = ridge(a.astype(np.float64), Ytr, b.astype(np.float64), lam_s)
        acc = (pred == Yte).mean(0) * 100
        both = ((pred[:, 0] == Yte[:, 0]) & (pred[:, 1] == Yte[:, 1])).mean() * 100
        print(f'{name:32s} lam {lam:8.0e}: shape first {acc[0]:5.1f} second {acc[1]:5.1f} both {both:5.1f} | colour {acc[2]:5.1f} {acc[3]:5.1f}', flush=True)
