"""The AV-VQA benchmark builder (recipe section 1.2): a pool of 50 four-choice questions in six
categories, 12 per video (6 required + 6 sampled, seeded per video), answered by an annotation
answerer and a video answerer; agreement is verified ground truth, disagreement goes to review.

    avcap bench build  --config FILE --dataset DIR     # DIR/bench/answers.jsonl, pairs.jsonl
    avcap bench review --dataset DIR                   # DIR/bench/review.csv to fill in
    avcap bench apply  --dataset DIR --reviews FILE    # DIR/vqa.jsonl
    avcap bench stats  --dataset DIR                   # the numbers the recipe reports
"""

from avcap.bench.build import build_benchmark
from avcap.bench.pool import format_question, load_pool
from avcap.bench.review import apply_reviews, write_review_file
from avcap.bench.stats import bench_stats

__all__ = ["apply_reviews", "bench_stats", "build_benchmark", "format_question", "load_pool", "write_review_file"]
