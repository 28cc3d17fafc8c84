# panel.gp - the next plot in grid cell (ARG1 = row, ARG2 = column): see common.gp.
set lmargin at screen px0(ARG2 + 0)
set rmargin at screen px1(ARG2 + 0)
set tmargin at screen py1(ARG1 + 0)
set bmargin at screen py0(ARG1 + 0)
