"""spark-preprocess: pull requests from MongoDB to versioned Parquet features."""
