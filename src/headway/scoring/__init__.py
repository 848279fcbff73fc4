"""The scoring layer: the one mechanism on a head's slice (:mod:`.hooks`), the loss on
response tokens (:mod:`.loss`), one batch's head scores by the gate or the eager reference
(:mod:`.head_scores`), and every row of a task, resumable (:mod:`.score`)."""
