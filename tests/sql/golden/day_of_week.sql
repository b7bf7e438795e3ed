WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    TRY(EXTRACT(DAYOFWEEK FROM visit_date)) AS "__dp_k0",
    1 AS "__dp_v0"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
    AND TRY(EXTRACT(DAYOFWEEK FROM visit_date)) IN (0, 1, 2, 3, 4, 5, 6)
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    COALESCE(SUM("__dp_v0"), 0) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_contrib" AS (
  SELECT
    "__dp_k0",
    CAST(ROUND(
      CASE
        WHEN SUM(ABS("__dp_s0")) OVER (PARTITION BY "__dp_unit") <= 20
        THEN "__dp_s0"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s0" / SUM(ABS("__dp_s0")) OVER (PARTITION BY "__dp_unit")
      END * CAST(64.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0"
  FROM __dp_groups
)
SELECT
  "__dp_k0",
  CAST(COALESCE(SUM("__dp_s0"), 0) AS BIGINT) AS "__dp_s0"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
