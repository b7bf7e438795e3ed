WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    device AS "__dp_k0",
    CASE
      WHEN converted
      THEN CASE
        WHEN spend IS NULL OR ISNAN(spend)
        THEN NULL
        ELSE LEAST(GREATEST(spend, 0.0), 500.0)
      END
    END AS "__dp_v0"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
    AND device IN ('desktop', 'mobile', 'tablet', 'tv')
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    COALESCE(SUM("__dp_v0"), 0) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_units" AS (
  SELECT
    "__dp_unit",
    SUM("__dp_s0") AS "__dp_t0"
  FROM __dp_groups
  GROUP BY
    "__dp_unit"
), "__dp_joined" AS (
  SELECT
    *
  FROM __dp_groups
  JOIN __dp_units
    USING (__dp_unit)
), "__dp_contrib" AS (
  SELECT
    "__dp_k0",
    CAST(ROUND(
      CASE
        WHEN "__dp_t0" <= 10000
        THEN "__dp_s0"
        ELSE CAST(10000.0 AS DOUBLE) * "__dp_s0" / "__dp_t0"
      END * CAST(0.125 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0"
  FROM __dp_joined
)
SELECT
  "__dp_k0",
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
