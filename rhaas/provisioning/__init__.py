"""Provisioning: the FPBL builder (`rhaas.provisioning.fpbl`), images, boot service and jobs."""
