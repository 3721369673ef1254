"""Does a model follow the text? The evaluator (a small text <-> video CLIP) and everything around it.

model.py     the Evaluator network and the frame orders it is checked against
training.py  `main.py train-evaluator`: InfoNCE on real clips (synthetic: an independent render), with reordered
             clips and captions and shape- / path-swapped renders as negatives
store.py     saving and loading evaluator files
captions.py  which captions and real clips an evaluation compares
metrics.py   retrieval (learned, and training-free in pixel features), KID, Frechet distance, SSIM / PSNR,
             frame-to-frame change
(the synthetic signer's ground truth, which needs no learned model, is methods/ground_truth.py)
evaluate.py  `main.py evaluate`: generate, score, report
"""
