-- name: models
-- description: Every model with its family, role, objective (best-epoch validation loss, lower is better), checkpoint file and where it came from (parent model, trial).
-- param: campaign = null
SELECT m.id AS model, c.name AS campaign, m.name, m.role, m.family,
       CAST(m.metrics::jsonb ->> 'objective' AS DOUBLE PRECISION) AS objective,
       m.parent_id AS parent, tr.hpo || ' #' || tr.number AS trial, a.path AS checkpoint
FROM models m JOIN campaigns c ON c.id = m.campaign_id
LEFT JOIN artifacts a ON a.id = m.checkpoint_id
LEFT JOIN trials tr ON tr.id = m.trial_id
WHERE (CAST(:campaign AS TEXT) IS NULL OR c.name = :campaign)
ORDER BY c.name, m.id
