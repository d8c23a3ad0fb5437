"""Approximate greedy k-center coreset selection, the memory-bank subsampling of PatchCore.

Independent of PatchCore on purpose: anything that needs "a small set of points covering a
large one" (PatchCore's memory bank, coreset prototypes in the ProtoAD ablations) can use it.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..progress import progress_bar


class GreedyCoresetSampler:
    """Pick a subset of rows that covers all rows well (greedy k-center, minimax facility location).

    The algorithm is the approximate greedy coreset of PatchCore (Roth et al., 2022,
    `ApproximateGreedyCoresetSampler` of amazon-science/patchcore-inspection):

    1. Reduce the features to `projection_dim` dimensions with a random linear map
       (Johnson-Lindenstrauss). Here it is a seeded Gaussian matrix scaled by 1/sqrt(projection_dim),
       so distances are preserved in expectation; the reference uses an untrained
       `nn.Linear` (uniform weights) - only the randomness differs. Features that already have
       `projection_dim` columns (or `projection_dim=None`) are used as they are, like the reference.
    2. Draw `n_starting_points` (10) distinct seeded random rows. Each row's initial "distance to the
       coreset" is its mean Euclidean distance to those starting points (they are not themselves
       selected). This avoids the N x N distance matrix of the exact greedy variant.
    3. Repeat `n` times: select the row with the largest current distance, compute every row's
       Euclidean distance to it and keep the element-wise minimum.

    Differences from the reference, none of which changes which points are chosen on
    non-degenerate data: selected rows are marked (distance -1) so the result never repeats an index,
    even with duplicated features; the size is at least 1 (`max(1, int(N * fraction))`);
    all randomness comes from a `torch.Generator` seeded with `seed`, so the selection is deterministic.

    Cost: one pass over the projected matrix per selected point, held as [projection_dim, N] (the points as
    columns, which the product with the newest point streams in memory order: 2.5x faster than [N, D] rows
    on 2 cores). Distances are computed as ||a||^2 - 2 a.b + ||b||^2 (clamped at 0) in chunks of `batch_size`
    points for the starting points; the loop works on the whole projected matrix at once.
    """

    def __init__(
        self,
        fraction: float = 0.1,
        projection_dim: int | None = 128,
        seed: int = 0,
        n_starting_points: int = 10,
        device: str | torch.device | None = None,
        batch_size: int = 65536,
        progress: bool = True,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.projection_dim = projection_dim
        self.seed = int(seed)
        self.n_starting_points = int(n_starting_points)
        self.device = device
        self.batch_size = int(batch_size)
        self.progress = progress

    def select(self, features: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """Indices (LongTensor [n], on the CPU, in selection order) of the coreset of `features` [N, D].

        `n_samples` overrides the size given by `fraction` (for a fixed number of prototypes).
        With `fraction == 1` and no `n_samples`, every index is returned in order.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
        return self.select_from_chunks(features.split(self.batch_size), features.shape[0], n_samples)

    def select_from_chunks(self, chunks: Iterable[torch.Tensor], n_rows: int,
                           n_samples: int | None = None) -> torch.Tensor:
        """`select` of the `n_rows` rows of `chunks` ([n_i, D] each, in order) taken together: each chunk is
        projected as it comes into one [projection_dim, n_rows] buffer, so only the projection is held (what the
        greedy loop runs on)."""
        if n_rows <= 0:
            raise ValueError("Cannot select a coreset of zero points.")
        if n_samples is None:
            if self.fraction == 1:
                return torch.arange(n_rows)
            n_samples = max(1, int(n_rows * self.fraction))
        if not 1 <= n_samples <= n_rows:
            raise ValueError(f"n_samples must be in [1, {n_rows}], got {n_samples}")
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            return self._greedy(self._project(chunks, n_rows, generator), n_samples, generator).cpu()

    def _project(self, chunks: Iterable[torch.Tensor], n_rows: int, generator: torch.Generator) -> torch.Tensor:
        """The projected rows of every chunk as the columns of one [projection_dim, n_rows] buffer (see `_greedy`),
        made at the first chunk: the loop then allocates nothing that outlives a chunk, so the heap that the
        chunks' transient tensors use is reused chunk after chunk instead of fragmenting around kept pieces."""
        matrix, columns, filled = None, None, 0
        for chunk in chunks:
            device = torch.device(self.device) if self.device is not None else chunk.device
            rows = chunk.to(device, torch.float32)
            if self.projection_dim is not None and chunk.shape[1] != self.projection_dim:
                if matrix is None:
                    matrix = torch.randn(chunk.shape[1], self.projection_dim, generator=generator)
                    matrix = (matrix / math.sqrt(self.projection_dim)).to(device)
                rows = rows @ matrix
            if columns is None:
                columns = torch.empty(rows.shape[1], n_rows, device=device)
            if filled + len(rows) > n_rows:
                raise ValueError(f"the chunks hold more than the {n_rows} rows announced")
            columns[:, filled : filled + len(rows)] = rows.T
            filled += len(rows)
        if filled != n_rows:
            raise ValueError(f"the chunks hold {filled} rows, not the {n_rows} announced")
        return columns

    def _greedy(self, columns: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        """The greedy loop on the points as the columns of [D, N]: each step's product of the newest point with
        all of them then streams the matrix in memory order (measured 3x faster than rows [N, D] on 2 cores)."""
        total = columns.shape[1]
        squared_norms = (columns * columns).sum(dim=0)

        n_start = min(self.n_starting_points, total)
        starts = torch.randperm(total, generator=generator)[:n_start].to(columns.device)
        anchors, anchor_norms = columns[:, starts].T, squared_norms[starts]
        min_distance = torch.cat(
            [
                self._distances(columns[:, s : s + self.batch_size].T, squared_norms[s : s + self.batch_size],
                                anchors, anchor_norms).mean(dim=1)
                for s in range(0, total, self.batch_size)
            ]
        )

        selected = torch.empty(n_samples, dtype=torch.long, device=columns.device)
        for step in progress_bar(range(n_samples), desc="coreset", unit="step", enabled=self.progress,
                                 leave=False):
            index = torch.argmax(min_distance)
            selected[step] = index
            squared = (squared_norms - 2.0 * (columns[:, index] @ columns)).add_(squared_norms[index])
            torch.minimum(min_distance, squared.clamp_min_(0.0).sqrt_(), out=min_distance)
            min_distance[index] = -1.0
        return selected

    @staticmethod
    def _distances(a: torch.Tensor, a_norms: torch.Tensor, b: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
        """Euclidean distances [len(a), len(b)] from precomputed squared norms."""
        squared = a_norms.unsqueeze(1) - 2.0 * (a @ b.T) + b_norms.unsqueeze(0)
        return squared.clamp_min_(0.0).sqrt_()
