"""The nlhf quickstart, a plugin package: Nash-MD-PG vs RLHF on a non-transitive population.

The central claim of Munos et al. (arXiv 2312.00886), measured on a real (tiny)
transformer in a few minutes on CPU:

1. **Assets** (:mod:`nlhf_quickstart.assets`, built by the ``nlhf_prepare_spec`` hook
   that ``nlhf run`` calls once, when a spec's ``policy.model`` is a missing
   ``quickstart-assets/policy`` directory): a byte-level BPE tokenizer trained on shipped
   text, a tiny Llama fine-tuned (soft-target SFT) so that for prompts like
   ``"Pick a fruit:"`` it answers `` apple``/`` banana``/`` cherry`` then EOS with
   probabilities ≈ :data:`~nlhf_quickstart.task.SFT_PROBS` (this is μ), and
   ``prompts.jsonl``.
2. **Oracle** ``population`` (:mod:`nlhf_quickstart.population`): annotator types with
   Condorcet-cycle tastes over the answers, so P(y_i≻y_j) = Σ_k w_k·1[type k ranks i above
   j]; its scalar reward for ``rlhf_pg`` is the Bradley–Terry reward fitted to P.
3. **Measurement**: the oracle's ``summary`` (added to ``summary.json`` by the trainer)
   compares the policy's answer distribution with the tabular regularised Nash
   equilibrium π*_τ = softmax(log μ + Pπ*_τ/τ) of the same preference.

``python -m nlhf_quickstart`` runs ``specs/quickstart.yaml`` (Nash-MD-PG) and the same
spec with ``algorithm.name: rlhf_pg`` and prints both distances
(:mod:`nlhf_quickstart.report`).
"""
