"""``omnifuse experiment imputation`` (omnifuse.experiments.imputation) end to end: cosine similarities
before training and after every epoch, the saved embeddings, and the two figures."""

import numpy as np

from omnifuse.experiments.imputation import imputation
from tests.helpers import assert_png, read_csv_rows


def test_imputation_study(ref_cache, tmp_path, tiny):
    out = tmp_path / "imp"
    tiny["epochs"] = 3
    r = imputation(ref_cache, "mortality", folds=2, out=out, tsne_rows=40, **tiny)
    recs = r.extra["imputation"]
    assert [x["epoch"] for x in recs] == [-1, 0, 1, 2]  # before training, then every epoch (early stopping off)
    for x in recs:
        for m, v in x["cos"].items():
            assert -1.0 <= v <= 1.0 and x["n"][m] > 0
    with np.load(out / "runs" / "omnifuse" / "rate0_random" / "r0f0" / "embeddings.npz") as z:
        assert z["real_img"].shape == z["imputed_img"].shape and z["real_img"].shape[1] == 8
    assert_png(out / "imputation.png")
    assert_png(out / "tsne.png")
    assert len(read_csv_rows(out / "results.csv")) == 4 * 3
