"""Record: one batch of every stage (``batch``), what one job is (``jobs``), the whole job streamed into a store
(``run``), and the AlignIT and attention-map branches (``branches``)."""
