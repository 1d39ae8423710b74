-- name: top_trials
-- description: The best k trials of each HPO campaign by objective (best-epoch validation loss, lower is better).
-- param: campaign = null
-- param: k = 5
WITH ranked AS (
  SELECT c.name AS campaign, t.hpo, t.family, t.number AS trial, t.objective, t.best_epoch, t.status,
         t.config, ROW_NUMBER() OVER (PARTITION BY t.campaign_id, t.hpo ORDER BY t.objective ASC) AS rank
  FROM trials t JOIN campaigns c ON c.id = t.campaign_id
  WHERE t.objective IS NOT NULL AND t.status = 'done' AND (CAST(:campaign AS TEXT) IS NULL OR c.name = :campaign)
)
SELECT campaign, hpo, rank, family, trial, objective, best_epoch, config
FROM ranked WHERE rank <= :k ORDER BY campaign, hpo, rank
