"""Notebook steps that are specific to one notebook: load what it analyses, run what it compares.

Why a layer of its own: these steps wire the method packages together with the report layer (they
train or reuse registry rows through :func:`clipdepth.report.session.run_rows` and produce table rows for
:func:`clipdepth.report.session.finish_notebook`), so they sit above both; the method packages
(:mod:`clipdepth.study.neighbours`, :mod:`clipdepth.baselines`) stay free of notebook concerns.

- :mod:`clipdepth.report.steps.learned` -- the trained learned-token run that notebook 04 analyses;
- :mod:`clipdepth.report.steps.baselines` -- notebook 05's rows: DepthCLIP, learned-7, CLIP2Depth, LLM-MDE.
"""
