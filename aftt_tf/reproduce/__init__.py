"""The paper's comparison as one resumable pipeline (`aftt-reproduce`), and its report.

- `config`: `ReproduceConfig` and the training units it implies (no TensorFlow).
- `paper`: the paper's published numbers (Tables I-II, section VI.D).
- `pipeline`: the stages train -> export -> paired campaigns -> report.
- `sections`: one builder per table/figure of the report; `figures` draws them;
  `document` renders blocks to Markdown and self-contained HTML; `report` composes.
"""
