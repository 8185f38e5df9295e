"""aftt-report: one report (report.md, report.html with figures) of any aftt-faults
campaign directories: your own models, Keras and .tflite files, deployed and repaired
protocols in one view.

    aftt-report campaigns/mine_weight campaigns/mine_int8_weight --out=reports/mine
"""

from __future__ import annotations

from absl import flags

from aftt_tf.cli import common

flags.DEFINE_string("out", None, "Directory of report.md, report.html and figures/.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    directories = argv[1:]
    if not directories:
        raise common.usage_error(
            "Give one or more campaign directories: aftt-report DIR [DIR ...] --out=REPORT_DIR."
        )
    if not FLAGS.out:
        raise common.usage_error("--out is required: the report's directory.")
    from aftt_tf.reproduce import campaign_report

    with common.usage_errors():
        paths = campaign_report.check_directories(directories)
        campaign_report.check_out(FLAGS.out, paths)
    markdown, html = campaign_report.write(directories, FLAGS.out)
    print(f"Report: {markdown} and {html}")


def run() -> None:
    common.run(main, "aftt-report", (__name__,))


if __name__ == "__main__":
    run()
