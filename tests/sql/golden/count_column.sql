WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    CASE WHEN NOT duration_s IS NULL AND NOT ISNAN(duration_s) THEN 1 END AS "__dp_v0"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    COALESCE(SUM("__dp_v0"), 0) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit"
), "__dp_contrib" AS (
  SELECT
    CAST(LEAST("__dp_s0", 20) AS BIGINT) AS "__dp_s0"
  FROM __dp_groups
)
SELECT
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
