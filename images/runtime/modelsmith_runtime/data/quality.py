"""Quality scores: character entropy, and similarity to a reference domain (TF-IDF).

Entropy is per document and cheap, so it runs with the other cheap filters
(`filters.QualityFilters`). The domain score needs a vectorizer fitted on the
reference corpus: every process that filters (each indexed worker, the Ray driver)
reads the reference and fits its own, and since the fit sees the same documents in
the same order it is the same vectorizer everywhere, and a document's score does not
depend on which worker scored it.

The score is the cosine between a document's TF-IDF vector and the centroid of the
reference's (the mean of their unit vectors). Two details make it mean "reads like
the reference": words in more than half of the reference documents are dropped
(``max_df``: the domain's own stop words, in any language, which would otherwise
dominate the centroid and make any text in the same language look close), and words
the reference never uses still count in the document's norm, at the idf of a word
seen nowhere: scikit-learn's transform would ignore them, and a text in another
vocabulary would be judged on the few common words it shares.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from modelsmith.api.datapipeline import DataSource, DomainFilter
from modelsmith_runtime.data.readers import list_source, read_documents
from modelsmith_runtime.data.stats import Stats
from modelsmith_runtime.errors import BadInputError

MAX_DF = 0.5
"""Words in more than this share of the reference documents carry no domain."""
FIELD = "filters.domain.reference"


def char_entropy(text: str) -> float:
    """Shannon entropy of the character distribution, in bits per character."""
    if not text:
        return 0.0
    counts = np.fromiter(Counter(text).values(), dtype=np.float64)
    p = counts / len(text)
    return max(0.0, float(-(p * np.log2(p)).sum()))  # one character: -0.0


def read_reference(uri: str, spec: DomainFilter) -> list[str]:
    """The reference documents, in order; BadInputError naming the field otherwise."""
    source = DataSource(uri=uri, format=spec.format, textField=spec.text_field)
    try:
        files = list_source(0, source)
        texts = [doc.text for doc in read_documents([files], 0, 1, Stats())]
    except BadInputError as exc:
        raise BadInputError(exc.reason, exc.message.replace("sources[0]", FIELD)) from exc
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise BadInputError("EmptyReference", f"{FIELD}: {uri} holds no documents")
    return texts


class DomainScorer:
    """TF-IDF cosine similarity to the reference corpus' centroid."""

    def __init__(self, reference: list[str]) -> None:
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
        except ImportError as exc:
            raise BadInputError(
                "Unsupported", "filters.domain needs scikit-learn, which this image lacks"
            ) from exc
        if not reference:
            raise BadInputError("EmptyReference", f"{FIELD} holds no documents")
        vectorizer = TfidfVectorizer(
            sublinear_tf=True, max_df=MAX_DF if len(reference) > 1 else 1.0, dtype=np.float64
        )
        try:
            matrix = vectorizer.fit_transform(reference)
        except ValueError as exc:  # no word at all, or every word in most documents
            raise BadInputError(
                "EmptyReference",
                f"{FIELD}: its {len(reference)} documents leave no distinctive word "
                f"(words in more than {MAX_DF:.0%} of them are dropped): {exc}",
            ) from exc
        centroid = np.asarray(matrix.mean(axis=0)).ravel()
        self.centroid = centroid / np.linalg.norm(centroid)
        self.analyzer: Any = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.idf: np.ndarray[Any, Any] = vectorizer.idf_
        seen = {word for text in reference for word in self.analyzer(text)}
        self.common = seen - self.vocabulary.keys()
        self.unseen_idf = math.log(1 + len(reference)) + 1  # smooth idf at document frequency 0
        self.documents = len(reference)

    def score(self, text: str) -> float:
        dot = norm = 0.0
        for word, count in Counter(self.analyzer(text)).items():
            if word in self.common:
                continue
            tf = 1.0 + math.log(count)
            column = self.vocabulary.get(word)
            if column is None:
                norm += (tf * self.unseen_idf) ** 2
                continue
            weight = tf * float(self.idf[column])
            norm += weight * weight
            dot += weight * float(self.centroid[column])
        return dot / math.sqrt(norm) if norm else 0.0

    def scores(self, texts: list[str]) -> np.ndarray[Any, Any]:
        return np.fromiter((self.score(text) for text in texts), dtype=np.float64, count=len(texts))
