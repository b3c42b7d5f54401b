#!/usr/bin/env bash
# Entrypoint of the spark-preprocess image.
#
# In the cluster the Spark Operator starts this image's driver and executor pods with `driver`
# or `executor` as the first argument: the contract of Spark's own Kubernetes images, which
# this python-based image follows so that it needs no second base image. Anything else runs
# the stage's CLI, as in every other stage image (`--help`, or a local run).
set -euo pipefail

SPARK_HOME="${SPARK_HOME:-$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}"
CLASSPATH="${SPARK_HOME}/jars/*${SPARK_JARS_DIR:+:${SPARK_JARS_DIR}/*}"

require() {
  for name in "$@"; do
    if [ -z "${!name:-}" ]; then
      echo "spark-entrypoint: ${name} is not set; executor pods get it from the Spark driver" >&2
      exit 2
    fi
  done
}

# Driver and executor pods run with a read-only root: Spark's working directory (where an
# executor copies the files and jars it fetches) must be writable, so it is below /tmp, the
# pods' emptyDir. The connector jars are in the image: they go on the class path of the
# driver and of every executor, and nothing is fetched (SPARK_JARS_DIR).
work_dir() {
  mkdir -p "${SPARK_WORK_DIR:-/tmp/spark-work}"
  cd "${SPARK_WORK_DIR:-/tmp/spark-work}"
}

case "${1:-}" in
  driver)
    shift
    work_dir
    # The operator already chose cluster mode: inside the driver pod Spark runs in client mode.
    exec "${SPARK_HOME}/bin/spark-submit" \
      --deploy-mode client \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" \
      ${SPARK_JARS_DIR:+--conf "spark.driver.extraClassPath=${SPARK_JARS_DIR}/*"} \
      ${SPARK_JARS_DIR:+--conf "spark.executor.extraClassPath=${SPARK_JARS_DIR}/*"} \
      "$@"
    ;;
  executor)
    shift
    work_dir
    require SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID \
      SPARK_EXECUTOR_POD_IP SPARK_EXECUTOR_MEMORY
    # The driver passes JVM options as SPARK_JAVA_OPT_0, _1, ... in order.
    java_opts=()
    while IFS= read -r name; do
      java_opts+=("${!name}")
    done < <(compgen -e | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n)
    exec java "${java_opts[@]}" \
      "-Xms${SPARK_EXECUTOR_MEMORY}" "-Xmx${SPARK_EXECUTOR_MEMORY}" \
      -cp "${CLASSPATH}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" \
      --executor-id "${SPARK_EXECUTOR_ID}" \
      --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" \
      --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:-$(hostname)}"
    ;;
  *)
    exec spark-preprocess "$@"
    ;;
esac
