"""Metrics: coco-caption BLEU, MCQ-VQA accuracy, LingoQA (Lingo-Judge)."""
