#!/bin/sh
# First start of the Postgres volume only: POSTGRES_DB (Prefect's) exists already; add MLflow's database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE "${MLFLOW_DB}";
SQL
