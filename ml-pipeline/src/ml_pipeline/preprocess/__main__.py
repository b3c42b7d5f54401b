"""`python -m ml_pipeline.preprocess`, and the file the cluster's SparkApplication submits."""

import sys

from ml_pipeline.preprocess.cli import main

sys.exit(main())
