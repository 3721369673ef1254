"""Does a model follow the text? The evaluator (a small text <-> video CLIP) and everything around it.

model.py     the Evaluator network and the frame orders it is checked against
training.py  `main.py train-evaluator`: InfoNCE on real clips, with reordered clips and captions as negatives
store.py     saving and loading evaluator files
captions.py  which captions and real clips an evaluation compares
metrics.py   retrieval, Frechet distance, SSIM / PSNR, frame-to-frame change
evaluate.py  `main.py evaluate`: generate, score, report
"""
