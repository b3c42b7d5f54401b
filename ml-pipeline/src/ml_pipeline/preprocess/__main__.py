"""The Spark Operator's mainApplicationFile: the same job as the `spark-preprocess` script."""

import sys

from ml_pipeline.preprocess.cli import main

if __name__ == "__main__":
    sys.exit(main())
