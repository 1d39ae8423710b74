-- name: screening_hits
-- description: Screening hits with the model, its family and trial, and the datasets the model was trained on.
-- param: campaign = null
-- param: limit = 50
SELECT h.rank, h.structure_id, h.formula, h.natoms, h.score, h.energy_per_atom, h.uncertainty,
       m.name AS model, m.family, tr.hpo, tr.number AS trial, h.task_id AS screening_task,
       (SELECT GROUP_CONCAT(DISTINCT d.name) FROM lineage l JOIN datasets d ON CAST(d.id AS TEXT) = l.src_id
        WHERE l.src_kind = 'dataset' AND l.kind = 'input_of' AND l.dst_kind = 'task'
          AND l.dst_id IN (m.task_id, (SELECT tr2.task_id FROM trials tr2 WHERE tr2.id = m.trial_id))) AS datasets
FROM screening_hits h JOIN tasks t ON t.id = h.task_id JOIN campaigns c ON c.id = t.campaign_id
     LEFT JOIN models m ON m.id = h.model_id LEFT JOIN trials tr ON tr.id = m.trial_id
WHERE (:campaign IS NULL OR c.name = :campaign)
ORDER BY h.task_id, h.rank LIMIT :limit
