"""Property keys, defined once (as schnetpack's ``properties.py`` does).

Every reader, store, model, loss and app names graph fields through these constants. Units: positions and cell
in Å, energies in eV, forces in eV/Å, stress in eV/Å^3.

A batch of ``G`` graphs with ``N`` atoms and ``E`` directed edges holds:

=================  ==============  ======================================================================
key                shape / dtype   meaning
=================  ==============  ======================================================================
``z``              [N] int64       atomic numbers
``pos``            [N, 3] float    Cartesian positions, Å
``cell``           [G, 3, 3] float lattice vectors as rows, Å (zeros for molecules)
``pbc``            [G, 3] bool     periodic directions
``edge_index``     [2, E] int64    ``edge_index[0]`` = neighbour j (source), ``edge_index[1]`` = centre i
``shift``          [E, 3] float    integer cell shifts S: r_ij = pos[j] - pos[i] + S @ cell[graph(i)]
``energy``         [G] float       total energy, eV (raw, before reference subtraction)
``forces``         [N, 3] float    forces, eV/Å
``stress``         [G, 3, 3] float stress, eV/Å^3 (periodic data only; NaN where absent)
``head``           [G] int64       head id from the dataset registry (routes each graph to its head)
``natoms``         [G] int64       atoms per graph
``batch``          [N] int64       graph index of each atom (PyG)
``eref``           [G] float       sum of the dataset's fitted element reference energies, eV
``sid``            [G] int64       stable structure id (hash) used for splits and de-duplication
``has_forces``     [G] bool        whether the graph carries force labels
``has_stress``     [G] bool        whether the graph carries stress labels
=================  ==============  ======================================================================
"""

Z = "z"
POS = "pos"
CELL = "cell"
PBC = "pbc"
EDGE_INDEX = "edge_index"
SHIFT = "shift"
ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
HEAD = "head"
NATOMS = "natoms"
BATCH = "batch"
SID = "sid"
EREF = "eref"
HAS_FORCES = "has_forces"
HAS_STRESS = "has_stress"
CHARGE = "charge"
SPIN = "spin"

ENERGY_UNIT = "eV"
LENGTH_UNIT = "Å"
FORCE_UNIT = "eV/Å"
STRESS_UNIT = "eV/Å^3"
