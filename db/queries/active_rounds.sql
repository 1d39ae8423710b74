-- name: active_rounds
-- description: How the held-out error changed per active-learning round: the members' mean and best held-out force MAE (meV/Å) and energy MAE (meV/atom), the base datasets' test force MAE, labels computed and failed (round 0: the held-out set), and the dataset version trained on.
-- param: campaign = null
SELECT c.name AS campaign, mt.epoch AS round,
       COUNT(DISTINCT t.id) AS models,
       AVG(CASE WHEN mt.split = 'heldout' AND mt.name = 'force_mae_mev_per_a' THEN mt.value END)
         AS heldout_force_mae_mev_per_a,
       MIN(CASE WHEN mt.split = 'heldout' AND mt.name = 'force_mae_mev_per_a' THEN mt.value END)
         AS best_heldout_force_mae_mev_per_a,
       AVG(CASE WHEN mt.split = 'heldout' AND mt.name = 'energy_mae_mev_per_atom' THEN mt.value END)
         AS heldout_energy_mae_mev_per_atom,
       AVG(CASE WHEN mt.split = 'test' AND mt.name = 'force_mae_mev_per_a' THEN mt.value END)
         AS base_test_force_mae_mev_per_a,
       (SELECT COUNT(*) FROM labels lb WHERE lb.campaign_id = c.id AND lb.round = mt.epoch AND lb.status = 'ok')
         AS labelled,
       (SELECT COUNT(*) FROM labels lb WHERE lb.campaign_id = c.id AND lb.round = mt.epoch AND lb.status <> 'ok')
         AS failed_labels,
       (SELECT MIN(d.name || ' v' || CAST(d.version AS VARCHAR(10)) || ' ' || SUBSTR(d.content_hash, 1, 12))
          FROM tasks tf JOIN lineage l ON l.kind = 'input_of' AND l.src_kind = 'dataset' AND l.dst_kind = 'task'
                                      AND l.dst_id = tf.id
               JOIN datasets d ON CAST(d.id AS VARCHAR(64)) = l.src_id
         WHERE tf.campaign_id = c.id AND tf.key LIKE 'active/r%/finetune/%' AND d.version = mt.epoch)
         AS dataset_version
FROM metrics mt JOIN tasks t ON t.id = mt.task_id JOIN campaigns c ON c.id = t.campaign_id
WHERE t.key LIKE 'active/r%/evaluate/%' AND (CAST(:campaign AS VARCHAR(200)) IS NULL OR c.name = :campaign)
GROUP BY c.id, c.name, mt.epoch
ORDER BY c.name, mt.epoch
