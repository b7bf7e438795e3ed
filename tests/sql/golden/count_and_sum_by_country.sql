WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    country AS "__dp_k0",
    1 AS "__dp_v0",
    CASE
      WHEN spend IS NULL OR ISNAN(spend)
      THEN NULL
      ELSE LEAST(GREATEST(spend, 0.0), 500.0)
    END AS "__dp_v1"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
    AND country IN (
      'AR',
      'AT',
      'AU',
      'BE',
      'BR',
      'CA',
      'CH',
      'CL',
      'DE',
      'DK',
      'ES',
      'FI',
      'FR',
      'GB',
      'IE',
      'IN',
      'IS',
      'IT',
      'JP',
      'KE',
      'KR',
      'LU',
      'MX',
      'NG',
      'NL',
      'NO',
      'NZ',
      'PL',
      'PT',
      'SE',
      'SG',
      'US',
      'ZA'
    )
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    COUNT(*) AS "__dp_s0",
    COALESCE(SUM("__dp_v1"), 0) AS "__dp_s1"
  FROM __dp_rows
  GROUP BY
    "__dp_unit",
    "__dp_k0"
), "__dp_units" AS (
  SELECT
    "__dp_unit",
    COUNT(*) AS "__dp_ng",
    SUM("__dp_s0") AS "__dp_t0",
    SUM("__dp_s1") AS "__dp_t1"
  FROM __dp_groups
  GROUP BY
    "__dp_unit"
), "__dp_joined" AS (
  SELECT
    *
  FROM __dp_groups
  JOIN __dp_units
    USING (__dp_unit)
), "__dp_kept" AS (
  SELECT
    "__dp_unit",
    "__dp_k0",
    "__dp_s0",
    "__dp_s1",
    "__dp_t0",
    "__dp_t1"
  FROM __dp_joined
  WHERE
    "__dp_ng" <= 20
  UNION ALL
  SELECT
    "__dp_unit",
    "__dp_k0",
    "__dp_s0",
    "__dp_s1",
    SUM("__dp_s0") OVER (PARTITION BY "__dp_unit") AS "__dp_t0",
    SUM("__dp_s1") OVER (PARTITION BY "__dp_unit") AS "__dp_t1"
  FROM (
    SELECT
      *
    FROM (
      SELECT
        *,
        ROW_NUMBER() OVER (PARTITION BY "__dp_unit" ORDER BY HASH("__dp_unit", "__dp_k0", $salt)) AS "__dp_rank"
      FROM __dp_joined
      WHERE
        "__dp_ng" > 20
    ) AS __dp_ranked
    WHERE
      "__dp_rank" <= 20
  ) AS __dp_chosen
), "__dp_contrib" AS (
  SELECT
    "__dp_k0",
    CAST(ROUND(
      CASE
        WHEN "__dp_t0" <= 20
        THEN "__dp_s0"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s0" / "__dp_t0"
      END * CAST(64.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0",
    CAST(ROUND(
      CASE
        WHEN "__dp_t1" <= 10000
        THEN "__dp_s1"
        ELSE CAST(10000.0 AS DOUBLE) * "__dp_s1" / "__dp_t1"
      END * CAST(0.125 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s1"
  FROM __dp_kept
)
SELECT
  "__dp_k0",
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0",
  COALESCE(SUM("__dp_s1"), 0) AS "__dp_s1"
FROM __dp_contrib
GROUP BY
  "__dp_k0"
