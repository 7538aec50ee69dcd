"""Evaluation after a search: each study's best configuration re-trained for several seeds and
tested once on the test split (`reruns`), the statistics that compare arms (`stats`), the
reports (`report`, `sweep_report`, `document`, `figures`) and the swept comparison (`sweep`)."""
