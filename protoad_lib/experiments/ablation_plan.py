"""What notebook 07 ablates for each profile (`AblationPlan`): the settings each ablation sweeps, and which
categories the costly ones (image size, N-pad, PRN) run on."""

from __future__ import annotations

from dataclasses import dataclass

from ..methods.prn import schedule_for, training_epochs
from ..methods.protoad import ProtoADConfig
from ..profiles import Profile
from .npad_ablations import NPAD_SWEEPS


@dataclass(frozen=True)
class AblationPlan:
    """The settings each ablation sweeps for one profile (what notebook 07 runs)."""

    max_vectors: int
    layer_subsets: tuple[tuple[int, ...], ...] = ((1, 2, 3), (2, 3), (1, 2))
    clustering_methods: tuple[str, ...] = ("finch", "kmeans", "coreset", "random")
    strategies: tuple[str, ...] = ("random", "stratified")
    budgets: tuple[int, ...] = ()
    image_sizes: tuple[int, ...] = (160, 224, 288)
    image_size_categories: int | None = None  # how many categories get re-extracted (None: all)
    sigmas: tuple[float, ...] = (0, 2, 4, 8)
    image_score_rules: tuple[str, ...] = ("max", "mean_top1pct")
    npad_sweeps: tuple[tuple[str, tuple], ...] = NPAD_SWEEPS
    prn_epochs: tuple[int, ...] = (5, 15)  # the last is the reference training length
    prn_seen: tuple[int, ...] = (2,)
    prn_schedule: str = "cpu"
    prn_categories: int | None = None  # how many categories PRN's ablation trains on (None: all)
    npad_categories: int | None = None  # how many categories N-pad's ablation runs on (None: all)

    def ablates(self, name: str, index: int) -> bool:
        """Whether the run's category number `index` (from 0) gets ablation `name`: image size, N-pad and PRN
        may run on the first few categories only."""
        limit = {"image_size": self.image_size_categories, "npad": self.npad_categories,
                 "prn": self.prn_categories}.get(name)
        return limit is None or index < limit

    def config(self, seed: int = 0) -> ProtoADConfig:
        """The reference ProtoAD configuration every ablation starts from."""
        return ProtoADConfig(max_vectors=self.max_vectors, seed=seed)


def ablation_plan(profile: Profile, device: str = "cpu") -> AblationPlan:
    """The profile's clustering budget (`Profile.max_vectors`) as the reference; how many categories the
    costly ablations cover and how many seen anomalies PRN's trains on are the profile's (`Profile.ablation_*`:
    the demo re-extracts features at other image sizes for one category only).

    PRN trains with the schedule of `device` (`prn.schedule_for`: "full" on CUDA, "cpu" elsewhere) for a
    third of its epochs, all of them (once when that is the same length), and all of them with a few seen
    anomalies (`Profile.prn_epochs` replaces the schedule's length). The paper profile runs PRN's and
    N-pad's ablations on the first category only: three trainings, or ten N-pad settings (24 minutes with
    WRN50 on 2 cores), would add hours per category on a CPU (see README, "Paper-scale cost").

    Coreset *subsampling* is left out of both plans (pass it in `strategies` to run it): the greedy
    selection runs on the CPU in `clustering.subsample_indices` and costs one pass over all training
    vectors per kept vector (minutes for 10,000 of the demo's 50,176; hours for 60,000 of an MVTec AD
    category's ~600,000). Coreset *prototypes* at FINCH's K stay in the clustering-method ablation.
    """
    budget = profile.max_vectors
    if profile.smoke:  # every ablation runs, each with its fewest settings
        return AblationPlan(max_vectors=budget, layer_subsets=((1, 2, 3), (2, 3)), clustering_methods=("finch", "kmeans"),
                            strategies=("stratified",), budgets=(budget,), image_sizes=(48, 64),
                            image_size_categories=1, sigmas=(0, 4), image_score_rules=("max",),
                            npad_sweeps=(("radius", (0, 1)), ("n_centroids", (0, 16)),
                                         ("test_neighbourhood", ("pooled", "min")), ("fusion", ("sum", "max"))),
                            prn_epochs=(1,), prn_seen=(1,), prn_categories=1, npad_categories=1)
    epochs = training_epochs(device, profile.prn_epochs)
    return AblationPlan(max_vectors=budget, strategies=("random", "stratified"),
                        budgets=(budget // 4, budget // 2, budget),
                        image_size_categories=profile.ablation_image_size_categories,
                        prn_epochs=tuple(sorted({max(1, epochs // 3), epochs})),
                        prn_seen=(profile.ablation_seen_anomalies,), prn_schedule=schedule_for(device),
                        prn_categories=profile.ablation_costly_categories,
                        npad_categories=profile.ablation_costly_categories)
