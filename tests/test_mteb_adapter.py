"""Our encoders inside the real ``mteb`` package: small in-memory tasks, scores equal to our evaluators."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.fake_encoders import HashEncoder
from retrieval.eval.mteb_adapter import MTEBEncoder
from retrieval.eval.mteb_tasks import evaluate_classification, evaluate_pair_classification, evaluate_sts

S1 = ["a man plays a guitar", "the cat sleeps on the mat", "stocks fell sharply today", "a child eats an apple",
      "two dogs run in a park", "the senate passed the bill", "rain is expected tomorrow", "she reads a long novel"]
S2 = ["a man is playing guitar", "a dog sleeps on a rug", "markets dropped today", "a kid eats fruit",
      "dogs are running outside", "lawmakers approved a bill", "the weather will be sunny", "he writes a letter"]
SCORES = [4.8, 2.5, 4.0, 3.6, 3.9, 4.2, 1.5, 0.8]


def test_protocol_shape_without_running_mteb() -> None:
    model = MTEBEncoder(HashEncoder(dim=16))
    batches = [{"text": ["hello world", "a b"]}, {"text": ["c"]}]
    emb = model.encode(batches, task_metadata=None, hf_split="test", hf_subset="default")
    assert emb.shape == (3, 16) and emb.dtype == np.float32
    sim = model.similarity(emb, emb)
    assert sim.shape == (3, 3) and np.allclose(np.diag(sim), 1.0, atol=1e-6)
    assert np.allclose(model.similarity_pairwise(emb, emb), 1.0, atol=1e-6)
    assert model.name == "retrievekit/hash-bow"


class DocAware(HashEncoder):
    def encode_documents(self, docs, show_progress=None):
        return -super().encode_documents(docs)


def test_prompt_type_selects_document_encoder() -> None:
    model = MTEBEncoder(DocAware(dim=8))
    q = model.encode([{"text": ["x y"]}], prompt_type="query")
    d = model.encode([{"text": ["x y"]}], prompt_type="document")
    np.testing.assert_allclose(q, -d)


@pytest.fixture(scope="module")
def mteb():
    return pytest.importorskip("mteb")


def _run(mteb, task) -> dict:
    result = mteb.evaluate(MTEBEncoder(HashEncoder()), [task], cache=None, show_progress_bar=False)
    return result.task_results[0].scores["test"][0]


def test_mteb_sts_equals_ours(mteb) -> None:
    from datasets import Dataset, DatasetDict
    from mteb.mocks.mock_tasks.sts import MockSTSTask

    class TinySTS(MockSTSTask):
        min_score, max_score = 0, 5

        def load_data(self, **kwargs) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": S1, "sentence2": S2, "score": SCORES})})
            self.data_loaded = True

    theirs = _run(mteb, TinySTS())
    ours = evaluate_sts(HashEncoder(), S1, S2, SCORES)
    assert theirs["cosine_spearman"] == pytest.approx(ours["cosine_spearman"], abs=1e-6)
    assert theirs["cosine_pearson"] == pytest.approx(ours["cosine_pearson"], abs=1e-5)


@pytest.mark.slow
def test_mteb_pair_classification_equals_ours(mteb) -> None:
    from datasets import Dataset, DatasetDict
    from mteb.mocks.mock_tasks.pair_classification import MockPairClassificationTask

    labels = [1, 0, 1, 1, 1, 1, 0, 0]

    class TinyPairs(MockPairClassificationTask):
        def load_data(self, **kwargs) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": S1, "sentence2": S2, "labels": labels})})
            self.data_loaded = True

    theirs = _run(mteb, TinyPairs())
    ours = evaluate_pair_classification(HashEncoder(), S1, S2, labels)
    assert theirs["cosine_ap"] == pytest.approx(ours["cosine_ap"], abs=1e-9)
    assert theirs["max_ap"] == pytest.approx(ours["max_ap"], abs=1e-9)


@pytest.mark.slow
def test_mteb_classification_equals_ours(mteb) -> None:
    from datasets import Dataset, DatasetDict
    from mteb.mocks.mock_tasks.classification import MockClassificationTask
    from sklearn.linear_model import LogisticRegression

    topics = {0: "guitar music song band", 1: "stock market price bank", 2: "rain weather sun cloud"}
    rng = np.random.default_rng(3)

    def texts(n: int) -> tuple[list[str], list[int]]:
        labels = [int(i % 3) for i in range(n)]
        words = [" ".join(rng.choice(topics[y].split() + ["the", "a", "is", "today"], size=5)) for y in labels]
        return words, labels

    train_x, train_y = texts(60)
    test_x, test_y = texts(30)

    class TinyClassification(MockClassificationTask):
        evaluator_model = LogisticRegression(max_iter=100)
        samples_per_label, n_experiments = 8, 10

        def load_data(self, **kwargs) -> None:
            self.dataset = DatasetDict({"train": Dataset.from_dict({"text": train_x, "label": train_y}),
                                        "test": Dataset.from_dict({"text": test_x, "label": test_y})})
            self.data_loaded = True

    theirs = _run(mteb, TinyClassification())
    ours = evaluate_classification(HashEncoder(), train_x, train_y, test_x, test_y)
    assert theirs["accuracy"] == pytest.approx(ours["accuracy"], abs=1e-9)
