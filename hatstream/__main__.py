from hatstream.cli import main

raise SystemExit(main())
