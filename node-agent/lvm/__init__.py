"""LVM: the only code in Cairn that runs lvm commands, and its activation of volumes as devices."""
